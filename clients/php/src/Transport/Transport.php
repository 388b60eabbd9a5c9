<?php

declare(strict_types=1);

namespace Phase\Transport;

use Phase\Job;
use Phase\Result;

/** A way to run a job: over phase/1 (NetworkTransport), on this machine (LocalTransport), or a node's HTTP API. */
interface Transport
{
    /** Run $job and return its result with a verified receipt, or throw a Phase\PhaseError. */
    public function run(Job $job): Result;

    /** Release sockets and processes. Idempotent. */
    public function close(): void;
}
