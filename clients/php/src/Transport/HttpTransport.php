<?php

declare(strict_types=1);

namespace Phase\Transport;

use Phase\Job;
use Phase\NetworkError;
use Phase\PhaseError;
use Phase\Receipt;
use Phase\Result;

/**
 * Jobs through a node's HTTP/JSON API (plasmd --api; its OpenAPI document is at /openapi.json), with
 * PHP's own HTTP streams: no curl needed. The receipt is checked here too: signature, module, input,
 * stdout and stderr hashes, and the signer, which must be the node behind the API (where "here") or one
 * of $peers (where "network"). The nonce is the node's choice, so it cannot be checked by this client:
 * this transport trusts the API node not to replay an old result; NetworkTransport does not need to.
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

    public function run(Job $job): Result
    {
        $body = ['module' => base64_encode($job->module), 'input' => base64_encode($job->input),
            'args' => $job->args, 'env' => (object) $job->env, 'entry' => $job->entry, 'limits' => $job->limits,
            'deterministic' => $job->deterministic, 'where' => $this->where, 'wait' => true];
        if ($this->peers) {
            $body['peers'] = $this->peers;
        }
        [$status, $doc] = $this->request('POST', '/v1/jobs', json_encode($body, JSON_THROW_ON_ERROR));
        while ($status === 202 && in_array($doc['state'] ?? '', ['queued', 'running'], true)) {
            usleep(20_000);
            [$status, $doc] = $this->request('GET', '/v1/jobs/' . rawurlencode((string) $doc['id']));
        }
        if (($doc['state'] ?? '') !== 'done') {
            $attempts = array_map(static fn (array $a): array => [(string) $a[0], (string) $a[1]],
                is_array($doc['attempts'] ?? null) ? $doc['attempts'] : []);
            throw new NetworkError('the node could not run the job: ' . ($doc['error'] ?? 'unknown'), $attempts);
        }
        $id = rawurlencode((string) $doc['id']);
        [, $stdout] = $this->request('GET', "/v1/jobs/$id/stdout", raw: true);
        [, $stderr] = $this->request('GET', "/v1/jobs/$id/stderr", raw: true);
        [, $fields] = $this->request('GET', "/v1/jobs/$id/receipt");
        $receipt = (new Receipt($fields))->verify(signer: $this->expectedSigner((string) $doc['peer']),
            stdout: $stdout, stderr: $stderr, module: $job->module, input: $job->input);
        return Result::fromReceipt($receipt, $stdout, $stderr, (string) $doc['peer'],
            array_map(static fn (array $a): array => [(string) $a[0], (string) $a[1]], $doc['attempts'] ?? []), true);
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
