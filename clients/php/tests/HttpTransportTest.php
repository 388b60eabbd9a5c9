<?php

declare(strict_types=1);

namespace Phase\Tests;

use Phase\Client;
use Phase\Job;
use Phase\NetworkError;
use Phase\PhaseError;

/** The SDK through a node's HTTP API (plasmd serves it on loopback by default). */
final class HttpTransportTest extends NodeTestCase
{
    private static function api(NodeProcess $node): string
    {
        return trim((string) file_get_contents(dirname($node->log) . '/node/api'));
    }

    public function testJobHereThroughTheApi(): void
    {
        $node = $this->node();
        $client = Client::http(self::api($node));
        $result = $client->submit(Job::fromFile(self::HELLO)->withInput("Hello, World\n"));
        $this->assertSame('dlroW ,olleH', $result->stdout);
        $this->assertTrue($result->verified);
        $this->assertSame($node->peerId, $result->peer);
        $this->assertSame($node->peerId, $result->receipt->signerPeerId());
    }

    public function testOutputStreamsThroughTheApi(): void
    {
        $node = $this->node();
        $client = Client::http(self::api($node));
        $result = $this->assertDripStreams($client);
        $this->assertSame($node->peerId, $result->receipt->signerPeerId());
    }

    public function testJobSentToAnotherNodeThroughTheApi(): void
    {
        $gateway = $this->node();
        $worker = $this->node();
        $client = Client::http(self::api($gateway), where: 'network', peers: [$worker->address]);
        $result = $client->submit(Job::fromFile(self::HELLO)->withInput('abc'));
        $this->assertSame('cba', $result->stdout);
        $this->assertSame($worker->peerId, $result->peer);
        $this->assertCount(1, $worker->events('result'));
        $this->assertCount(0, $gateway->events('result'));
    }

    public function testApiErrorsBecomeExceptions(): void
    {
        $node = $this->node();
        $client = Client::http(self::api($node), where: 'network', peers: [$node->peerId . '@127.0.0.1:9']);
        try {
            $client->submit(Job::fromFile(self::HELLO));
            $this->fail('a job no peer could run succeeded');
        } catch (NetworkError $e) {
            $this->assertStringContainsString('no peer could take the job', $e->getMessage());
        }
        $this->expectException(PhaseError::class);
        $this->expectExceptionMessageMatches('/HTTP 400 bad_request: .*limits/');
        Client::http(self::api($node))->submit(Job::fromFile(self::HELLO)->withLimits(memoryBytes: 5 << 30));
    }
}
