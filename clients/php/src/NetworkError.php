<?php

declare(strict_types=1);

namespace Phase;

/**
 * A remote job could not be completed on any peer; $attempts lists [peer id, what went wrong]
 * (Python: NetworkError).
 */
class NetworkError extends PhaseError
{
    /** @param list<array{0: string, 1: string}> $attempts */
    public function __construct(string $message, public readonly array $attempts = [])
    {
        if ($attempts) {
            $message .= ': ' . implode('; ', array_map(
                static fn (array $a): string => substr($a[0], 0, 12) . ': ' . $a[1],
                $attempts,
            ));
        }
        parent::__construct($message);
    }
}
