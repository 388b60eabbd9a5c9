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

    protected function tearDown(): void
    {
        foreach ($this->nodes as $node) {
            $node->stop();
        }
        $this->nodes = [];
    }
}
