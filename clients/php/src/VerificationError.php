<?php

declare(strict_types=1);

namespace Phase;

/** A receipt failed verification; $problems lists every check that failed (Python: VerificationError). */
class VerificationError extends PhaseError
{
    /** @param list<string> $problems */
    public function __construct(public readonly array $problems)
    {
        parent::__construct(implode('; ', $problems));
    }
}
