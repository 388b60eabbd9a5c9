<?php

declare(strict_types=1);

namespace Phase;

/**
 * What a job produced, with the receipt that vouches for it (already verified when a Client returns it).
 * $status is "ok" when the module ran to completion, whatever its exit code.
 */
final class Result
{
    /** @param list<array{0: string, 1: string}> $attempts failed attempts before this one: [peer id, why] */
    public function __construct(
        public readonly string $status,
        public readonly int $exitCode,
        public readonly string $message,
        public readonly string $stdout,
        public readonly string $stderr,
        public readonly int $fuelUsed,
        public readonly int $wallUs,
        public readonly Receipt $receipt,
        public readonly string $peer = '',
        public readonly array $attempts = [],
        public readonly bool $verified = false,
    ) {
    }

    /** Build a result from a receipt and the bytes it covers (hashes are checked by Receipt::verify). */
    public static function fromReceipt(Receipt $receipt, string $stdout, string $stderr, string $peer = '',
                                       array $attempts = [], bool $verified = false): self
    {
        $r = $receipt->fields;
        return new self((string) $r['status'], (int) $r['exit_code'], (string) $r['message'], $stdout, $stderr,
            (int) $r['fuel_used'], (int) $r['wall_us'], $receipt, $peer, $attempts, $verified);
    }

    public function ok(): bool
    {
        return $this->status === 'ok';
    }

    /** The job's wall time on the node, in whole milliseconds (rounded). */
    public function wallTimeMs(): int
    {
        return (int) round($this->wallUs / 1000);
    }

    /** $this if the job completed ("ok"), else throw JobError carrying this result. */
    public function check(): self
    {
        if ($this->status !== 'ok') {
            throw new JobError($this);
        }
        return $this;
    }
}
