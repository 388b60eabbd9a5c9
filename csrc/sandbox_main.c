/* main() of the phase-sandboxd executable (the fork server). It sits in the phasecore archive too
 * (csrc/sandbox_*.c are globbed into it), harmlessly: nothing there references `main`, so the linker
 * never pulls this object into the Python extension. */
#include "sandbox.h"

int main(int argc, char **argv)
{
    return phase_sandbox_server_main(argc, argv);
}
