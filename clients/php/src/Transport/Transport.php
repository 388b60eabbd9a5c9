<?php

declare(strict_types=1);

namespace Phase\Transport;

use Phase\Job;
use Phase\Result;

/** A way to run a job: over phase/1 (NetworkTransport), on this machine (LocalTransport), or a node's HTTP API. */
interface Transport
{
    /**
     * Run $job and return its result with a verified receipt, or throw a Phase\PhaseError.
     *
     * $onOutput(int $stream, string $data) gets stdout (1) and stderr (2) as they arrive (all of the output, in
     * order); pieces that come before the receipt are unverified until run() returns. A failure after some output
     * was shown throws UnverifiedOutput and is not retried elsewhere.
     *
     * @param (callable(int, string): mixed)|null $onOutput
     */
    public function run(Job $job, ?callable $onOutput = null): Result;

    /** Release sockets and processes. Idempotent. */
    public function close(): void;
}
