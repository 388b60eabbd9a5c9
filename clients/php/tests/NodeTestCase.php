<?php

declare(strict_types=1);

namespace Phase\Tests;

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

    protected function tearDown(): void
    {
        foreach ($this->nodes as $node) {
            $node->stop();
        }
        $this->nodes = [];
    }
}
