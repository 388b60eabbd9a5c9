<?php

declare(strict_types=1);

namespace Phase\Tests;

use Phase\Client;
use Phase\Job;
use Phase\NetworkError;
use Phase\NoPeers;
use Phase\Receipt;
use Phase\UnverifiedOutput;

/** The SDK against real plasmd processes over phase/1 on loopback. */
final class ClientTest extends NodeTestCase
{
    public function testJobRunsAndItsReceiptVerifies(): void
    {
        $node = $this->node();
        $client = new Client([$node->address]);
        $job = Job::fromFile(self::HELLO)->withInput('Hello, World');
        $result = $client->submit($job);
        $this->assertSame('dlroW ,olleH', $result->stdout);
        $this->assertSame('', $result->stderr);
        $this->assertSame(0, $result->exitCode);
        $this->assertSame('ok', $result->status);
        $this->assertTrue($result->verified);
        $this->assertSame($node->peerId, $result->peer);
        $this->assertSame($node->peerId, $result->receipt->signerPeerId());
        $this->assertSame([], $result->attempts);
        // the receipt stands on its own: anyone can check it later against the bytes
        $again = Receipt::fromJson($result->receipt->toJson());
        $again->verify(signer: $node->peerId, stdout: 'dlroW ,olleH', module: $job->module, input: 'Hello, World');
        $this->expectException(\Phase\VerificationError::class);
        $again->verify(stdout: 'something else');
    }

    public function testOutputStreamsAsTheJobRuns(): void
    {
        $node = $this->node();
        $client = new Client([$node->address]);
        $result = $this->assertDripStreams($client);
        $this->assertSame($node->peerId, $result->peer);
        $start = microtime(true);
        // a job that ends at once: its output comes with the result, still through the callback
        $pieces = [];
        $this->assertSame('cba', $client->submit(Job::fromFile(self::HELLO)->withInput('abc'),
            self::recorder($pieces, $start))->stdout);
        $this->assertSame('cba', self::joined($pieces, 1));
    }

    public function testTamperedChunkIsCaughtAfterTheOutputAndSaidLoudly(): void
    {
        $cheat = $this->node('tamper-chunk');
        $honest = $this->node();
        $client = new Client([$cheat->address]);
        $pieces = [];
        try {
            $client->submit(self::drip()->withArgs(['3', '300']), self::recorder($pieces, microtime(true)));
            $this->fail('output that does not match its receipt was accepted');
        } catch (UnverifiedOutput $e) {
            $this->assertNotEmpty($pieces);
            $this->assertSame(array_sum(array_map(static fn (array $p): int => strlen($p[2]), $pieces)), $e->shown);
            $this->assertSame($cheat->peerId, $e->peer);
            $this->assertStringContainsString('UNVERIFIED OUTPUT', $e->getMessage());
            $this->assertStringContainsString('hash', $e->getMessage());
        }
        // not moved to another peer once output was shown; without a callback the job does fail over
        $both = new Client([$cheat->address, $honest->address], retries: 1);
        $this->assertSame("tick 0\ntick 1\ntick 2\n", $both->submit(self::drip()->withArgs(['3', '10']))->stdout);
    }

    public function testModuleIsSentOnceThenCached(): void
    {
        $node = $this->node();
        $client = new Client([$node->address]);
        $job = Job::fromFile(self::HELLO);
        foreach (['one', 'two', 'three'] as $input) {
            $this->assertSame(strrev($input), $client->submit($job->withInput($input))->stdout);
        }
        $offers = $node->events('offer');
        $this->assertCount(3, $offers);
        $this->assertSame([false, true, true], array_column($offers, 'cached'));
        $this->assertCount(1, $node->events('module_cached'));
        // a new client (new connection) finds it cached too
        $this->assertSame('ruof', (new Client([$node->address]))->submit($job->withInput('four'))->stdout);
        $this->assertTrue($node->events('offer')[3]['cached']);
    }

    public function testFailoverAfterTheServingNodeIsKilled(): void
    {
        $a = $this->node();
        $b = $this->node();
        $client = new Client([$a->address, $b->address], connectTimeout: 1.0);
        $job = Job::fromFile(self::HELLO)->withInput('abc');
        $first = $client->submit($job);
        $dead = $first->peer === $a->peerId ? $a : $b;
        $alive = $dead === $a ? $b : $a;
        $dead->kill();
        // the dead node holds the module, so it is tried first; the job must move to the other
        $second = $client->submit($job);
        $this->assertSame('cba', $second->stdout);
        $this->assertSame($alive->peerId, $second->peer);
        $this->assertCount(1, $second->attempts);
        $this->assertSame($dead->peerId, $second->attempts[0][0]);
        // seen closed before the offer, or (on a loaded machine) only after the offer went into the closing connection
        $this->assertMatchesRegularExpression('/^(not reachable within 1 s|connection dropped)$/',
            $second->attempts[0][1]);
    }

    public function testANodeKilledMidJobIsNoticedAtOnceNotAtTheJobTimeout(): void
    {
        $node = $this->node();
        $client = new Client([$node->address], connectTimeout: 1.0, retries: 0);
        $job = self::drip()->withArgs(['40', '250'])->withLimits(timeoutMs: 30_000);   // 10 s; waited for: 35 s
        $shown = [];
        $killed = null;
        try {
            $client->submit($job, static function (int $s, string $data) use ($node, &$shown, &$killed): void {
                $shown[] = [$s, $data];
                $node->kill();
                $killed ??= microtime(true);
            });
            $this->fail('a job whose node was killed returned');
        } catch (UnverifiedOutput $e) {
            $this->assertSame([[1, "tick 0\n"]], $shown);
            $this->assertCount(1, $e->attempts);
            $this->assertSame('connection dropped', $e->attempts[0][1]);
            $this->assertLessThan(3.0, microtime(true) - $killed);   // looked at every 0.1 s
        }
    }

    public function testTamperedReceiptIsRefused(): void
    {
        $forger = $this->node('forge-receipt');
        $client = new Client([$forger->address], retries: 0);
        try {
            $client->submit(Job::fromFile(self::HELLO)->withInput('x'));
            $this->fail('a forged receipt was accepted');
        } catch (NetworkError $e) {
            $this->assertCount(1, $e->attempts);
            $this->assertStringContainsString('bad receipt', $e->attempts[0][1]);
            $this->assertStringContainsString('signature does not match', $e->attempts[0][1]);
        }
    }

    public function testStdoutNotMatchingTheReceiptIsRefusedAndTheJobMovesOn(): void
    {
        $liar = $this->node('mismatch-stdout');
        $honest = $this->node();
        $client = new Client([$liar->address, $honest->address]);
        $job = Job::fromFile(self::HELLO)->withInput('xyz');
        for ($i = 0; $i < 4; $i++) {   // the peer order is random; the liar is avoided once caught
            $result = $client->submit($job);
            $this->assertSame('zyx', $result->stdout);
            $this->assertSame($honest->peerId, $result->peer);
            foreach ($result->attempts as [$peer, $why]) {
                $this->assertSame($liar->peerId, $peer);
                $this->assertStringContainsString('stdout hash', $why);
            }
        }
    }

    public function testANodeThatNeverAnswersIsLeftAfterTheTimeout(): void
    {
        $hang = $this->node('hang');
        $honest = $this->node();
        $job = Job::fromFile(self::HELLO)->withInput('late');
        $timedOut = 0;
        for ($i = 0; $i < 12 && $timedOut === 0; $i++) {   // fresh clients pick either peer first, at random
            $result = (new Client([$hang->address, $honest->address], timeout: 1.0))->submit($job);
            $this->assertSame('etal', $result->stdout);
            $this->assertSame($honest->peerId, $result->peer);
            foreach ($result->attempts as [$peer, $why]) {
                $this->assertSame([$hang->peerId, 'timed out'], [$peer, $why]);
                $timedOut++;
            }
        }
        $this->assertSame(1, $timedOut, 'the hanging node was never tried first (chance 1 in 4096)');
    }

    public function testWrongSignerIsRefused(): void
    {
        $node = $this->node('wrong-signer');
        $client = new Client([$node->address], retries: 0);
        try {
            $client->submit(Job::fromFile(self::HELLO)->withInput('x'));
            $this->fail('a receipt signed by another key was accepted');
        } catch (NetworkError $e) {
            $this->assertMatchesRegularExpression('/bad receipt: .*signed by [a-z2-7]{52}, expected ' . $node->peerId
                . '/', $e->attempts[0][1]);
        }
    }

    public function testWrongPeerIdFailsTheCurveHandshake(): void
    {
        $node = $this->node();
        [, $hostport] = explode('@', $node->address);
        $impostor = \Phase\Identity::generate()->peerId() . '@' . $hostport;
        $client = new Client([$impostor], connectTimeout: 0.5, retries: 0);
        $this->expectException(NetworkError::class);
        $this->expectExceptionMessageMatches('/not reachable within 0.5 s/');
        $client->submit(Job::fromFile(self::HELLO));
    }

    public function testLimitsBeyondTheNodesAreRejected(): void
    {
        $node = $this->node();
        $client = new Client([$node->address], retries: 0);
        try {
            $client->submit(Job::fromFile(self::HELLO)->withLimits(memoryBytes: 4 << 30));
            $this->fail('an offer beyond the node limits was accepted');
        } catch (NetworkError $e) {
            $this->assertStringContainsString('rejected: limits', $e->getMessage());
        }
    }

    public function testJobStatusOtherThanOkComesBackVerified(): void
    {
        $node = $this->node();
        $client = new Client([$node->address]);
        $result = $client->submit(new Job("\0asm\x01\0\0\0garbage"));
        $this->assertSame('invalid_module', $result->status);
        $this->assertTrue($result->verified);
        $this->expectException(\Phase\JobError::class);
        $result->check();
    }

    public function testNoPeers(): void
    {
        $this->expectException(NoPeers::class);
        new Client([]);
    }
}
