<?php

declare(strict_types=1);

namespace Phase;

/**
 * Output was handed to the caller's $onOutput as a peer streamed it, and then the job failed on that peer (its
 * receipt did not verify, it broke the stream's rules, it went silent): what was shown is not verified. Not
 * retried elsewhere, since the output already went out (Python: UnverifiedOutput).
 */
final class UnverifiedOutput extends NetworkError
{
    /** @param list<array{0: string, 1: string}> $attempts */
    public function __construct(public readonly string $peer, public readonly int $shown, string $why,
                                array $attempts = [])
    {
        parent::__construct(sprintf('UNVERIFIED OUTPUT: %s bytes of output from %s were shown as they came, then %s; '
            . 'do not trust them', number_format($shown), $peer, $why), $attempts);
    }
}
