/* Writes "tick I" lines, one every INTERVAL ms, COUNT times (argv[1], argv[2]); odd ticks also write "tock I" to
 * stderr. Each line is flushed, so a reader sees it when it is written: the streaming tests' slow job. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

int main(int argc, char **argv)
{
    int count = argc > 1 ? atoi(argv[1]) : 5;
    int interval_ms = argc > 2 ? atoi(argv[2]) : 200;
    struct timespec pause = {interval_ms / 1000, (long) (interval_ms % 1000) * 1000000L};
    for (int i = 0; i < count; i++) {
        printf("tick %d\n", i);
        fflush(stdout);
        if (i % 2) {
            fprintf(stderr, "tock %d\n", i);
            fflush(stderr);
        }
        if (i + 1 < count)
            nanosleep(&pause, NULL);
    }
    return 0;
}
