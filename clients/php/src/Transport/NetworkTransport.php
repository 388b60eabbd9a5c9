<?php

declare(strict_types=1);

namespace Phase\Transport;

use Phase\Bin;
use Phase\Identity;
use Phase\Job;
use Phase\NetworkError;
use Phase\NoPeers;
use Phase\PeerAddress;
use Phase\PhaseError;
use Phase\Receipt;
use Phase\Result;
use Phase\UnverifiedOutput;
use Phase\VerificationError;
use Phase\Wire;

/**
 * A phase/1 peer: one CURVE DEALER socket per node (ZeroMQ through php-zmq), kept across jobs.
 *
 * The node's CURVE key is derived from its peer id, so the handshake proves the node holds the key the
 * address names; a result is returned only when its receipt verifies against that key, the nonce and
 * manifest sent and the bytes received. A reject, an error, an unreachable peer (not connected within
 * $connectTimeout), no result within $timeout (default: the job's timeout_ms + 5 s) or a bad receipt
 * sends the job to the next peer, up to $retries further attempts. Failed peers are avoided for a
 * while (a bad receipt: 5 minutes). As in pyphase.Client, so does a connection that drops before the result;
 * php-zmq has no socket monitor, so a waiting attempt looks at its connection every 0.1 s.
 *
 * With $onOutput, a node whose caps say "stream" is asked to stream the output: each chunk is checked (asked
 * for, stream 1 or 2, at the offset of the bytes received so far, 1 to 64 KiB, all within the job's
 * output_bytes) before it is handed on, and the receipt is verified against everything received. A failure
 * after output was shown throws UnverifiedOutput (docs/NETWORK.md, "Streamed output").
 */
final class NetworkTransport implements Transport
{
    public const TIMEOUT_SLACK_S = 5.0;
    private const MAX_BACKOFF_S = 1.0;
    private const BAD_RECEIPT_DOWN_S = 300.0;
    /** How often an attempt waiting for its result checks that its connection stands (php-zmq has no monitor). */
    private const LIVENESS_CHECK_S = 0.1;

    private \ZMQContext $ctx;
    private string $curvePublic;
    private string $curveSecret;
    /** @var array<string, array{address: PeerAddress, sock: ?\ZMQSocket, down_until: float, strikes: int, load: int, modules: array<string, true>, caps: ?array<string, mixed>}> */
    private array $peers = [];
    private int $counter = 0;
    private string $tagPrefix;
    private bool $closed = false;

    /** @param list<string|PeerAddress> $peers addresses PEERID@HOST:PORT */
    public function __construct(
        array $peers,
        ?Identity $identity = null,
        public readonly float $connectTimeout = 2.0,
        public readonly int $retries = 3,
        public readonly ?float $timeout = null,
    ) {
        foreach ($peers as $peer) {
            $address = $peer instanceof PeerAddress ? $peer : PeerAddress::parse($peer);
            $this->peers[$address->peerId] = ['address' => $address, 'sock' => null, 'down_until' => 0.0,
                'strikes' => 0, 'load' => 0, 'modules' => [], 'caps' => null];
        }
        if (!$this->peers) {
            throw new NoPeers('no peers given (PHP clients name their peers: PEERID@HOST:PORT)');
        }
        [$this->curvePublic, $this->curveSecret] = ($identity ?? Identity::generate())->curveKeypair();
        $this->ctx = new \ZMQContext(1, false);
        $this->tagPrefix = random_bytes(8);
    }

    public function run(Job $job, ?callable $onOutput = null): Result
    {
        if ($this->closed) {
            throw new NetworkError('the client is closed');
        }
        $timeout = $this->timeout ?? (($job->limits['timeout_ms'] ?: 3_600_000) / 1000 + self::TIMEOUT_SLACK_S);
        $failures = [];
        $tried = [];
        for ($attempt = 0; $attempt <= max(0, $this->retries); $attempt++) {
            $id = $this->pick($job, $tried) ?? $this->pick($job, []);
            if ($id === null) {
                break;
            }
            $wait = $this->peers[$id]['down_until'] - microtime(true);
            if ($wait > 0) {           // every candidate failed recently: back off before asking again
                usleep((int) (min($wait, self::MAX_BACKOFF_S) * 1e6));
            }
            $tried[$id] = true;
            $shown = 0;
            try {
                return $this->attempt($job, $id, $timeout, $failures, $onOutput, $shown);
            } catch (AttemptFailed $e) {
                $failures[] = [$id, $e->getMessage()];
                $this->markDown($id, $e->downFor);
                if ($shown > 0) {                  // the output is out: not moved to another peer
                    throw new UnverifiedOutput($id, $shown, $e->getMessage(), $failures);
                }
            }
        }
        throw $failures ? new NetworkError('every attempt failed', $failures)
            : new NoPeers('no peer could take the job');
    }

    /** @param array<string, true> $exclude */
    private function pick(Job $job, array $exclude): ?string
    {
        $now = microtime(true);
        $best = null;
        $bestScore = null;
        foreach ($this->peers as $id => $p) {
            if (isset($exclude[$id])) {
                continue;
            }
            $score = [$p['down_until'] > $now ? 1 : 0, isset($p['modules'][$job->moduleHash()]) ? 0 : 1, $p['load'],
                mt_rand()];
            if ($bestScore === null || $score < $bestScore) {
                [$best, $bestScore] = [$id, $score];
            }
        }
        return $best;
    }

    private function markDown(string $id, ?float $seconds): void
    {
        $p = &$this->peers[$id];
        $p['strikes']++;
        $p['down_until'] = microtime(true) + ($seconds ?? min(30.0, 0.5 * 2 ** $p['strikes']));
    }

    private function socket(string $id): \ZMQSocket
    {
        $p = &$this->peers[$id];
        if ($p['sock'] === null) {
            $sock = new \ZMQSocket($this->ctx, \ZMQ::SOCKET_DEALER);
            $sock->setSockOpt(\ZMQ::SOCKOPT_CURVE_SERVERKEY, $p['address']->curveKey());
            $sock->setSockOpt(\ZMQ::SOCKOPT_CURVE_PUBLICKEY, $this->curvePublic);
            $sock->setSockOpt(\ZMQ::SOCKOPT_CURVE_SECRETKEY, $this->curveSecret);
            $sock->setSockOpt(\ZMQ::SOCKOPT_LINGER, 0);
            $sock->setSockOpt(\ZMQ::SOCKOPT_IMMEDIATE, 1);   // send only over a completed (authenticated) connection
            $sock->setSockOpt(\ZMQ::SOCKOPT_RECONNECT_IVL, 100);
            $sock->setSockOpt(\ZMQ::SOCKOPT_RECONNECT_IVL_MAX, 2000);
            $sock->connect($p['address']->endpoint());
            $p['sock'] = $sock;
        }
        return $p['sock'];
    }

    /**
     * @param list<array{0: string, 1: string}> $failures
     * @param (callable(int, string): mixed)|null $onOutput
     * @param int $shown set to the output bytes handed to $onOutput before the attempt ended
     */
    private function attempt(Job $job, string $id, float $timeout, array $failures, ?callable $onOutput,
                             int &$shown): Result
    {
        $sock = $this->socket($id);
        $manifest = $job->manifest();
        $tag = $this->tagPrefix . pack('J', ++$this->counter);
        $now = microtime(true);
        $deadline = $now + $timeout;
        if (!$this->waitWritable($sock, $now + $this->connectTimeout)) {
            throw new AttemptFailed(sprintf('not reachable within %g s', $this->connectTimeout));
        }
        $stream = $onOutput !== null && ($this->caps($id, $sock, $now + $this->connectTimeout)['stream'] ?? false) === true;
        $fields = ['job' => new Bin($tag), 'manifest' => $manifest->fields] + ($stream ? ['stream' => true] : []);
        if ($sock->sendmulti(Wire::encode('offer', $fields, [$job->input]), \ZMQ::MODE_DONTWAIT) === false) {
            throw new AttemptFailed(sprintf('not reachable within %g s', $this->connectTimeout));
        }
        $received = [1 => '', 2 => ''];
        $output = $stream ? static function (int $s, string $data) use ($onOutput, &$shown): void {
            $shown += strlen($data);
            $onOutput($s, $data);
        } : null;
        while (($left = $deadline - microtime(true)) > 0) {
            $poll = new \ZMQPoll();
            $poll->add($sock, \ZMQ::POLL_IN);
            $readable = $writable = [];
            $poll->poll($readable, $writable, max(1, (int) ceil(min($left, self::LIVENESS_CHECK_S) * 1000)));
            while (($frames = $sock->recvmulti(\ZMQ::MODE_DONTWAIT)) !== false) {
                $result = $this->onMessage($job, $id, $sock, $tag, $manifest, $frames, $failures, $output, $received);
                if ($result !== null) {
                    if ($onOutput !== null) {       // what no chunk carried, now that it is verified
                        foreach ([1 => $result->stdout, 2 => $result->stderr] as $s => $data) {
                            if (strlen($data) > strlen($received[$s])) {
                                $onOutput($s, substr($data, strlen($received[$s])));
                            }
                        }
                    }
                    return $result;
                }
            }
            if (!$this->connected($sock)) {
                // the job went down with the connection, or into one that was already closing: a result would go
                // to the old connection's routing id, so none comes even if the node is back
                throw new AttemptFailed('connection dropped');
            }
        }
        throw new AttemptFailed('timed out');
    }

    /** The node's caps (asked for once per peer, within the connect timeout; [] when it does not answer). */
    private function caps(string $id, \ZMQSocket $sock, float $until): array
    {
        if ($this->peers[$id]['caps'] !== null) {
            return $this->peers[$id]['caps'];
        }
        if ($sock->sendmulti(Wire::encode('caps?'), \ZMQ::MODE_DONTWAIT) !== false) {
            while (($left = $until - microtime(true)) > 0 && $this->peers[$id]['caps'] === null) {
                $poll = new \ZMQPoll();
                $poll->add($sock, \ZMQ::POLL_IN);
                $readable = $writable = [];
                $poll->poll($readable, $writable, max(1, (int) ceil($left * 1000)));
                while (($frames = $sock->recvmulti(\ZMQ::MODE_DONTWAIT)) !== false) {
                    try {
                        [$type, $h] = Wire::decode($frames);
                    } catch (PhaseError) {
                        continue;
                    }
                    if ($type === 'caps' && is_array($h['caps'] ?? null)) {
                        $this->peers[$id]['caps'] = $h['caps'];
                    }
                }
            }
        }
        return $this->peers[$id]['caps'] ?? [];
    }

    /** Whether the socket has an authenticated connection now (SOCKOPT_IMMEDIATE: writable only then). */
    private function connected(\ZMQSocket $sock): bool
    {
        return self::writableWithin($sock, 0);
    }

    private function waitWritable(\ZMQSocket $sock, float $until): bool
    {
        do {
            if (self::writableWithin($sock, max(1, (int) ceil(($until - microtime(true)) * 1000)))) {
                return true;
            }
        } while (microtime(true) < $until);
        return false;
    }

    private static function writableWithin(\ZMQSocket $sock, int $ms): bool
    {
        $poll = new \ZMQPoll();
        $poll->add($sock, \ZMQ::POLL_OUT);
        $readable = $writable = [];
        return $poll->poll($readable, $writable, $ms) > 0;
    }

    /**
     * @param list<string> $frames
     * @param list<array{0: string, 1: string}> $failures
     * @param (callable(int, string): void)|null $output where chunks go (null: none were asked for)
     * @param array{1: string, 2: string} $received the output streamed so far
     */
    private function onMessage(Job $job, string $id, \ZMQSocket $sock, string $tag, \Phase\Manifest $manifest,
                               array $frames, array $failures, ?callable $output, array &$received): ?Result
    {
        try {
            [$type, $h, $payloads] = Wire::decode($frames);
        } catch (PhaseError) {
            return null;                            // garbage from a node is ignored; the timeout covers it
        }
        $load = $h['load'] ?? null;
        if (is_array($load) && is_int($load['running'] ?? null) && is_int($load['queued'] ?? null)) {
            $this->peers[$id]['load'] = $load['running'] + $load['queued'];
        }
        if (($h['job'] ?? null) !== $tag) {
            return null;                            // caps, or a late answer to an attempt already given up
        }
        switch ($type) {
            case 'chunk':
                $this->onChunk($job, $h, $payloads[0], $output, $received);
                return null;
            case 'accept':
                if (($h['module'] ?? false) === true) {
                    unset($this->peers[$id]['modules'][$job->moduleHash()]);
                    $message = Wire::encode('module', ['job' => new Bin($tag)], [$job->module]);
                    if ($sock->sendmulti($message, \ZMQ::MODE_DONTWAIT) === false) {
                        throw new AttemptFailed('connection lost while sending the module');
                    }
                }
                return null;
            case 'reject':
                $reason = (string) ($h['reason'] ?? '?');
                throw new AttemptFailed("rejected: $reason (" . (string) ($h['detail'] ?? '') . ')',
                    $reason === 'busy' ? min(self::MAX_BACKOFF_S, 0.02 * 2 ** $this->peers[$id]['strikes']) : 5.0);
            case 'error':
                throw new AttemptFailed('error ' . (string) ($h['code'] ?? '?') . ': ' . (string) ($h['detail'] ?? ''));
            case 'result':
                [$stdout, $stderr] = [$received[1] . $payloads[0], $received[2] . $payloads[1]];
                $receipt = new Receipt(is_array($h['receipt'] ?? null) ? $h['receipt'] : []);
                try {
                    $receipt->verify(signer: $this->peers[$id]['address']->publicKey, nonce: $manifest->nonce(),
                        manifest: $manifest, stdout: $stdout, stderr: $stderr);
                } catch (VerificationError $e) {
                    throw new AttemptFailed('bad receipt: ' . $e->getMessage(), self::BAD_RECEIPT_DOWN_S);
                }
                $this->peers[$id]['modules'][$job->moduleHash()] = true;
                $this->peers[$id]['strikes'] = 0;
                $this->peers[$id]['down_until'] = 0.0;
                return Result::fromReceipt($receipt, $stdout, $stderr, $id, $failures, true);
        }
        return null;
    }

    /**
     * A piece of the running job's output, checked against the stream's rules before it is handed on.
     *
     * @param array<string, mixed> $h
     * @param array{1: string, 2: string} $received
     */
    private function onChunk(Job $job, array $h, string $data, ?callable $output, array &$received): void
    {
        $stream = $h['stream'] ?? null;
        $offset = $h['offset'] ?? null;
        $total = strlen($received[1]) + strlen($received[2]) + strlen($data);
        $why = match (true) {
            $output === null => 'sent output chunks it was not asked for',
            $stream !== 1 && $stream !== 2 => 'sent a chunk of stream ' . json_encode($stream) . ' (1 stdout, 2 stderr)',
            $offset !== strlen($received[$stream]) => 'sent a chunk at offset ' . json_encode($offset)
                . " of stream $stream, expected " . strlen($received[$stream]),
            $data === '' || strlen($data) > Wire::MAX_CHUNK_BYTES => 'sent a chunk of ' . strlen($data)
                . ' bytes (1 to ' . Wire::MAX_CHUNK_BYTES . ' allowed)',
            $total > $job->limits['output_bytes'] => 'streamed ' . number_format($total)
                . " bytes, more than the job's output limit of " . $job->limits['output_bytes'] . ' bytes',
            default => null,
        };
        if ($why !== null) {
            throw new AttemptFailed("bad output stream: $why", self::BAD_RECEIPT_DOWN_S);
        }
        $received[$stream] .= $data;
        $output($stream, $data);
    }

    public function close(): void
    {
        if ($this->closed) {
            return;
        }
        $this->closed = true;
        foreach ($this->peers as &$p) {
            if ($p['sock'] !== null) {
                try {
                    $p['sock']->disconnect($p['address']->endpoint());
                } catch (\ZMQSocketException) {
                }
                $p['sock'] = null;
            }
        }
    }

    public function __destruct()
    {
        $this->close();
    }
}
