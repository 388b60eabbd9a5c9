<?php

declare(strict_types=1);

namespace Phase\Transport;

use Phase\Job;
use Phase\NetworkError;
use Phase\PhaseError;
use Phase\Receipt;
use Phase\Result;
use Phase\UnverifiedOutput;
use Phase\VerificationError;

/**
 * Jobs through a node's HTTP/JSON API (plasmd --api; its OpenAPI document is at /openapi.json), with
 * PHP's own HTTP streams: no curl needed. The receipt is checked here too: signature, module, input,
 * stdout and stderr hashes, and the signer, which must be the node behind the API (where "here") or one
 * of $peers (where "network"). The nonce is the node's choice, so it cannot be checked by this client:
 * this transport trusts the API node not to replay an old result; NetworkTransport does not need to.
 *
 * With $onOutput the job's output is read from GET /v1/jobs/{id}/events (server-sent events) as the node
 * streams it, then verified against the receipt; a failure after output was shown throws UnverifiedOutput.
 */
final class HttpTransport implements Transport
{
    private string $url;
    private ?string $nodePeerId = null;

    /** @param list<string> $peers for where "network": PEERID@HOST:PORT addresses (empty: the node's own) */
    public function __construct(string $url, private readonly ?string $token = null,
                                private readonly float $timeout = 60.0, private readonly string $where = 'here',
                                private readonly array $peers = [])
    {
        $this->url = rtrim($url, '/');
        if (!in_array($where, ['here', 'network'], true)) {
            throw new \InvalidArgumentException("where is 'here' or 'network', got '$where'");
        }
    }

    public function run(Job $job, ?callable $onOutput = null): Result
    {
        $body = ['module' => base64_encode($job->module), 'input' => base64_encode($job->input),
            'args' => $job->args, 'env' => (object) $job->env, 'entry' => $job->entry, 'limits' => $job->limits,
            'deterministic' => $job->deterministic, 'where' => $this->where, 'wait' => $onOutput === null,
            'stream' => $onOutput !== null];
        if ($this->peers) {
            $body['peers'] = $this->peers;
        }
        [$status, $doc] = $this->request('POST', '/v1/jobs', json_encode($body, JSON_THROW_ON_ERROR));
        $id = rawurlencode((string) $doc['id']);
        $output = null;
        if ($onOutput !== null) {
            [$doc, $output] = $this->follow($id, $onOutput);
        }
        while ($status === 202 && in_array($doc['state'] ?? '', ['queued', 'running'], true)) {
            usleep(20_000);
            [$status, $doc] = $this->request('GET', "/v1/jobs/$id");
        }
        $attempts = array_map(static fn (array $a): array => [(string) $a[0], (string) $a[1]],
            is_array($doc['attempts'] ?? null) ? $doc['attempts'] : []);
        $shown = $output === null ? 0 : strlen($output[1]) + strlen($output[2]);
        if (($doc['state'] ?? '') !== 'done') {
            $why = 'the node could not run the job: ' . ($doc['error'] ?? 'unknown');
            throw $shown ? new UnverifiedOutput((string) ($doc['peer'] ?? '?'), $shown, $why, $attempts)
                : new NetworkError($why, $attempts);
        }
        if ($output === null) {
            [, $stdout] = $this->request('GET', "/v1/jobs/$id/stdout", raw: true);
            [, $stderr] = $this->request('GET', "/v1/jobs/$id/stderr", raw: true);
        } else {
            [1 => $stdout, 2 => $stderr] = $output;
        }
        [, $fields] = $this->request('GET', "/v1/jobs/$id/receipt");
        try {
            $receipt = (new Receipt($fields))->verify(signer: $this->expectedSigner((string) $doc['peer']),
                stdout: $stdout, stderr: $stderr, module: $job->module, input: $job->input);
        } catch (VerificationError $e) {
            throw $shown ? new UnverifiedOutput((string) $doc['peer'], $shown, 'bad receipt: ' . $e->getMessage(),
                $attempts) : $e;
        }
        return Result::fromReceipt($receipt, $stdout, $stderr, (string) $doc['peer'], $attempts, true);
    }

    /**
     * Read the job's event stream to its end, handing each piece of output to $onOutput as it comes.
     *
     * @param callable(int, string): mixed $onOutput
     * @return array{0: array<string, mixed>, 1: array{1: string, 2: string}} the job at its end, and its output
     */
    private function follow(string $id, callable $onOutput): array
    {
        $path = "/v1/jobs/$id/events";
        $headers = ['Accept: text/event-stream'];
        if ($this->token !== null) {
            $headers[] = 'Authorization: Bearer ' . $this->token;
        }
        // HTTP/1.0: the events come unchunked until the server closes, so PHP reads them as they come (its
        // dechunk filter would hold each read back until 8 KiB arrived)
        $context = stream_context_create(['http' => ['method' => 'GET', 'header' => $headers,
            'timeout' => $this->timeout, 'ignore_errors' => true, 'protocol_version' => 1.0]]);
        $events = @fopen($this->url . $path, 'r', false, $context);
        if ($events === false) {
            throw new NetworkError("no answer from {$this->url}$path");
        }
        $output = [1 => '', 2 => ''];
        $event = $data = null;
        try {
            while (($line = fgets($events)) !== false) {
                $line = rtrim($line, "\r\n");
                if (str_starts_with($line, 'event: ')) {
                    $event = substr($line, 7);
                } elseif (str_starts_with($line, 'data: ')) {
                    $data = json_decode(substr($line, 6), true, 32);
                } elseif ($line === '' && $event !== null) {
                    if (!is_array($data)) {
                        throw new PhaseError("$path: an event whose data is not a JSON object");
                    }
                    if ($event === 'end') {
                        return [$data, $output];
                    }
                    $stream = ['stdout' => 1, 'stderr' => 2][$event] ?? null;
                    $piece = base64_decode((string) ($data['data'] ?? ''), true);
                    if ($stream === null || $piece === false || ($data['offset'] ?? null) !== strlen($output[$stream])) {
                        throw new PhaseError("$path: an event out of order or not as /openapi.json says ($event)");
                    }
                    $output[$stream] .= $piece;
                    $onOutput($stream, $piece);
                    $event = $data = null;
                }
            }
        } finally {
            fclose($events);
        }
        throw new NetworkError("$path ended before the job did");
    }

    private function expectedSigner(string $peer): string
    {
        if ($this->where === 'here') {
            $this->nodePeerId ??= (string) $this->request('GET', '/v1/node')[1]['peer_id'];
            return $this->nodePeerId;
        }
        foreach ($this->peers as $address) {
            if (str_starts_with(strtolower($address), strtolower($peer) . '@')) {
                return $peer;
            }
        }
        if (!$this->peers) {
            return $peer;                    // the node's own peers: it vouches for who they are
        }
        throw new NetworkError("the job ran on $peer, which is not one of the peers asked for");
    }

    /** @return array{0: int, 1: mixed} status and decoded JSON (or the raw body) */
    private function request(string $method, string $path, ?string $body = null, bool $raw = false): array
    {
        $headers = ['Accept: application/json'];
        if ($body !== null) {
            $headers[] = 'Content-Type: application/json';
        }
        if ($this->token !== null) {
            $headers[] = 'Authorization: Bearer ' . $this->token;
        }
        $context = stream_context_create(['http' => ['method' => $method, 'header' => $headers,
            'content' => $body ?? '', 'timeout' => $this->timeout, 'ignore_errors' => true,
            'protocol_version' => 1.1]]);
        $response = @file_get_contents($this->url . $path, false, $context);
        $status = 0;
        foreach ($http_response_header ?? [] as $line) {
            if (preg_match('#^HTTP/\S+ (\d{3})#', $line, $m)) {
                $status = (int) $m[1];
            }
        }
        if ($response === false || $status === 0) {
            throw new NetworkError("no answer from {$this->url}$path");
        }
        if ($status >= 400) {
            $error = json_decode($response, true);
            $what = is_array($error) ? ($error['error'] ?? '?') . ': ' . ($error['detail'] ?? '') : substr($response, 0, 200);
            throw new PhaseError("$method $path: HTTP $status $what");
        }
        if ($raw) {
            return [$status, $response];
        }
        $doc = json_decode($response, true, 32);
        if (!is_array($doc)) {
            throw new PhaseError("$method $path: the answer is not JSON");
        }
        return [$status, $doc];
    }

    public function close(): void
    {
    }
}
