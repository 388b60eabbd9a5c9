<?php

declare(strict_types=1);

namespace Phase;

/** A signature that is missing, malformed or does not verify (Python: SignatureError). */
class SignatureError extends PhaseError
{
}
