<?php

declare(strict_types=1);

namespace Phase;

/** A job ended with a status other than "ok"; $result holds what it produced (Python: JobError). */
class JobError extends PhaseError
{
    public function __construct(public readonly Result $result)
    {
        parent::__construct($result->message !== '' ? "{$result->status}: {$result->message}" : $result->status);
    }
}
