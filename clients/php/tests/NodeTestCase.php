<?php

declare(strict_types=1);

namespace Phase\Tests;

use Phase\Job;
use PHPUnit\Framework\TestCase;

/** A test case that starts real plasmd nodes and stops them afterwards. */
abstract class NodeTestCase extends TestCase
{
    public const HELLO = __DIR__ . '/../../../examples/hello/hello.wasm';
    /** @var list<NodeProcess> */
    private array $nodes = [];

    protected function node(?string $misbehave = null, array $extra = []): NodeProcess
    {
        $node = new NodeProcess(NodeProcess::tempDir() . '/node', $misbehave, $extra);
        $this->nodes[] = $node;
        return $node->start();
    }

    /** The drip module (tests/programs/drip.c: "tick I" lines every INTERVAL ms), built by tests/clients/test_php.py. */
    protected static function drip(): Job
    {
        $path = getenv('PHASE_DRIP_WASM');
        if (!$path || !is_file($path)) {
            throw new \RuntimeException('PHASE_DRIP_WASM names no file: run this suite through tests/clients/test_php.py');
        }
        return Job::fromFile($path);
    }

    /** A callback that records [seconds since $start, stream, data] for each piece of output. */
    protected static function recorder(array &$pieces, float $start): \Closure
    {
        return static function (int $stream, string $data) use (&$pieces, $start): void {
            $pieces[] = [microtime(true) - $start, $stream, $data];
        };
    }

    protected static function joined(array $pieces, int $stream): string
    {
        return implode('', array_map(static fn (array $p): string => $p[2],
            array_filter($pieces, static fn (array $p): bool => $p[1] === $stream)));
    }

    /** Run drip (5 ticks, 0.5 s apart) with a callback: all output reaches it, in order, the first tick early. */
    protected function assertDripStreams(\Phase\Client $client): \Phase\Result
    {
        $pieces = [];
        $start = microtime(true);
        $result = $client->submit(self::drip()->withArgs(['5', '500']), self::recorder($pieces, $start));
        $ended = microtime(true) - $start;
        $ticks = implode('', array_map(static fn (int $i): string => "tick $i\n", range(0, 4)));
        $this->assertSame($ticks, $result->stdout);
        $this->assertSame("tock 1\ntock 3\n", $result->stderr);
        $this->assertTrue($result->verified);
        $this->assertSame($ticks, self::joined($pieces, 1));
        $this->assertSame("tock 1\ntock 3\n", self::joined($pieces, 2));
        $this->assertLessThan($ended - 1.0, $pieces[0][0]);   // while 4 pauses of 0.5 s were still ahead
        return $result;
    }

    protected function tearDown(): void
    {
        foreach ($this->nodes as $node) {
            $node->stop();
        }
        $this->nodes = [];
    }
}
