<?php

declare(strict_types=1);

namespace Phase\Transport;

/** @internal One attempt on one peer failed; the job moves on. $downFor: how long to avoid that peer (null: back-off). */
final class AttemptFailed extends \Exception
{
    public function __construct(string $why, public readonly ?float $downFor = null)
    {
        parent::__construct($why);
    }
}
