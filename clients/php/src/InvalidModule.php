<?php

declare(strict_types=1);

namespace Phase;

/** The module bytes are not a valid WebAssembly module this runtime can run (Python: InvalidModule). */
class InvalidModule extends PhaseError
{
}
