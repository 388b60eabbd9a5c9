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
 * while (a bad receipt: 5 minutes). As in pyphase.Client; php-zmq has no socket monitor, so a node
 * that dies mid-job is noticed by the timeout rather than at once.
 */
final class NetworkTransport implements Transport
{
    public const TIMEOUT_SLACK_S = 5.0;
    private const MAX_BACKOFF_S = 1.0;
    private const BAD_RECEIPT_DOWN_S = 300.0;

    private \ZMQContext $ctx;
    private string $curvePublic;
    private string $curveSecret;
    /** @var array<string, array{address: PeerAddress, sock: ?\ZMQSocket, down_until: float, strikes: int, load: int, modules: array<string, true>}> */
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
                'strikes' => 0, 'load' => 0, 'modules' => []];
        }
        if (!$this->peers) {
            throw new NoPeers('no peers given (PHP clients name their peers: PEERID@HOST:PORT)');
        }
        [$this->curvePublic, $this->curveSecret] = ($identity ?? Identity::generate())->curveKeypair();
        $this->ctx = new \ZMQContext(1, false);
        $this->tagPrefix = random_bytes(8);
    }

    public function run(Job $job): Result
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
            try {
                return $this->attempt($job, $id, $timeout, $failures);
            } catch (AttemptFailed $e) {
                $failures[] = [$id, $e->getMessage()];
                $this->markDown($id, $e->downFor);
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

    /** @param list<array{0: string, 1: string}> $failures */
    private function attempt(Job $job, string $id, float $timeout, array $failures): Result
    {
        $sock = $this->socket($id);
        $manifest = $job->manifest();
        $tag = $this->tagPrefix . pack('J', ++$this->counter);
        $now = microtime(true);
        $deadline = $now + $timeout;
        $offer = Wire::encode('offer', ['job' => new Bin($tag), 'manifest' => $manifest->fields], [$job->input]);
        if (!$this->waitWritable($sock, $now + $this->connectTimeout) || $sock->sendmulti($offer, \ZMQ::MODE_DONTWAIT) === false) {
            throw new AttemptFailed(sprintf('not reachable within %g s', $this->connectTimeout));
        }
        while (($left = $deadline - microtime(true)) > 0) {
            $poll = new \ZMQPoll();
            $poll->add($sock, \ZMQ::POLL_IN);
            $readable = $writable = [];
            $poll->poll($readable, $writable, max(1, (int) ceil($left * 1000)));
            while (($frames = $sock->recvmulti(\ZMQ::MODE_DONTWAIT)) !== false) {
                $result = $this->onMessage($job, $id, $sock, $tag, $manifest, $frames, $failures);
                if ($result !== null) {
                    return $result;
                }
            }
        }
        throw new AttemptFailed('timed out');
    }

    private function waitWritable(\ZMQSocket $sock, float $until): bool
    {
        do {
            $poll = new \ZMQPoll();
            $poll->add($sock, \ZMQ::POLL_OUT);
            $readable = $writable = [];
            if ($poll->poll($readable, $writable, max(1, (int) ceil(($until - microtime(true)) * 1000))) > 0) {
                return true;
            }
        } while (microtime(true) < $until);
        return false;
    }

    /**
     * @param list<string> $frames
     * @param list<array{0: string, 1: string}> $failures
     */
    private function onMessage(Job $job, string $id, \ZMQSocket $sock, string $tag, \Phase\Manifest $manifest,
                               array $frames, array $failures): ?Result
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
                [$stdout, $stderr] = $payloads;
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
