<?php

declare(strict_types=1);

namespace Phase;

use Phase\Transport\HttpTransport;
use Phase\Transport\LocalTransport;
use Phase\Transport\NetworkTransport;
use Phase\Transport\Transport;

/**
 * Run WebAssembly jobs with Phase and get results whose receipts have been verified.
 *
 *     $client = new Phase\Client(['PEERID@127.0.0.1:7465']);          // phase/1 to these nodes
 *     $client = Phase\Client::local();                                 // `phase run` on this machine
 *     $client = Phase\Client::http('http://127.0.0.1:8465');           // a node's HTTP API
 *     $result = $client->submit(Phase\Job::fromFile('hello.wasm')->withInput('Hello, World'));
 *     echo $result->stdout, $result->exitCode, $result->wallTimeMs();
 *     $client->submit($job, fn (int $stream, string $data) => print($data));  // output as it comes
 *
 * Errors are the Python client's: NetworkError (every attempt failed; ->attempts), NoPeers,
 * VerificationError, InvalidModule, all PhaseError.
 */
final class Client
{
    public readonly Transport $transport;

    /** @param list<string|PeerAddress> $peers */
    public function __construct(array $peers = [], ?Transport $transport = null, ?Identity $identity = null,
                                float $connectTimeout = 2.0, int $retries = 3, ?float $timeout = null)
    {
        $this->transport = $transport ?? new NetworkTransport($peers, $identity, $connectTimeout, $retries, $timeout);
    }

    /** @param string|list<string>|null $command see LocalTransport */
    public static function local(string|array|null $command = null, ?string $identity = null,
                                 ?string $signer = null): self
    {
        return new self(transport: new LocalTransport($command, $identity, $signer));
    }

    /** @param list<string> $peers with $where "network": run on these peers (default: the node's own) */
    public static function http(string $url, ?string $token = null, float $timeout = 60.0, string $where = 'here',
                                array $peers = []): self
    {
        return new self(transport: new HttpTransport($url, $token, $timeout, $where, $peers));
    }

    /**
     * Run $job and return its verified result (any job status; Result::check() throws JobError unless ok).
     *
     * $onOutput(int $stream, string $data) gets stdout (1) and stderr (2) as the job writes them: over phase/1 as
     * the node streams them (docs/NETWORK.md, "Streamed output"), through the API as its event stream delivers
     * them, from LocalTransport once the job ended. What comes before the receipt is unverified until submit()
     * returns; a failure after output was shown throws UnverifiedOutput instead of moving the job elsewhere.
     *
     * @param (callable(int, string): mixed)|null $onOutput
     */
    public function submit(Job $job, ?callable $onOutput = null): Result
    {
        return $this->transport->run($job, $onOutput);
    }

    public function close(): void
    {
        $this->transport->close();
    }

    public function __destruct()
    {
        $this->close();
    }
}
