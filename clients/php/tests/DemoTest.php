<?php

declare(strict_types=1);

namespace Phase\Tests;

/** examples/php/*.php print the demo text of the issue, line for line (only the wall time varies). */
final class DemoTest extends NodeTestCase
{
    private const EXAMPLES = __DIR__ . '/../../../examples/php';

    private static function expected(string $title): string
    {
        return '/\A' . preg_quote("$title\n" . str_repeat('=', strlen($title) + 1) . "\n"
            . "1. Creating job for hello.wasm...\n"
            . "2. Submitting job with input: 'Hello, World'\n"
            . "3. Execution complete!\n"
            . "Results:\n--------\n"
            . "Output: dlroW ,olleH\n"
            . "Exit code: 0\n"
            . 'Wall time: ', '/') . '\d+' . preg_quote("ms\nReceipt verified: ✓\n", '/') . '\z/';
    }

    /** @param array<string, string> $env */
    private static function php(array $args, array $env = []): array
    {
        $proc = proc_open([PHP_BINARY, ...$args], [1 => ['pipe', 'w'], 2 => ['pipe', 'w']], $pipes, null,
            array_merge(getenv(), $env));
        $out = stream_get_contents($pipes[1]);
        $err = stream_get_contents($pipes[2]);
        return [proc_close($proc), $out, $err];
    }

    public function testRemoteDemo(): void
    {
        $node = $this->node();
        [$code, $out, $err] = self::php([self::EXAMPLES . '/remote_test.php', $node->address]);
        $this->assertSame(0, $code, $err);
        $this->assertMatchesRegularExpression(self::expected('Phase Remote WASM Execution Demo'), $out);
        $this->assertCount(1, $node->events('result'));
    }

    public function testLocalDemo(): void
    {
        $home = NodeProcess::tempDir();
        [$code, $out, $err] = self::php([self::EXAMPLES . '/local_test.php'],
            ['PHASE_CLI' => json_encode([NodeProcess::python(), '-m', 'pyphase']), 'PHASE_HOME' => $home]);
        $this->assertSame(0, $code, $err);
        $this->assertMatchesRegularExpression(self::expected('Phase Local WASM Execution Demo'), $out);
        $this->assertFileExists("$home/identity.key");     // the CLI signed with the user's identity
    }

    public function testLocalTransportHandsTheVerifiedOutputToTheCallback(): void
    {
        putenv('PHASE_HOME=' . NodeProcess::tempDir());
        $client = \Phase\Client::local([NodeProcess::python(), '-m', 'pyphase']);
        $pieces = [];
        $result = $client->submit(self::drip()->withArgs(['3', '10']), self::recorder($pieces, microtime(true)));
        $this->assertSame("tick 0\ntick 1\ntick 2\n", $result->stdout);
        $this->assertSame([[1, $result->stdout], [2, "tock 1\n"]], array_map(static fn (array $p): array => [$p[1], $p[2]],
            $pieces));                                   // at the end, once verified: phase run --json gives it so
    }

    public function testRemoteDemoNamesAnUnreachableNode(): void
    {
        $node = $this->node();
        $address = $node->address;
        $node->kill();
        [$code, $out, $err] = self::php([self::EXAMPLES . '/remote_test.php', $address]);
        $this->assertSame(1, $code);
        $this->assertStringContainsString('Phase\NetworkError: every attempt failed', $err);
        $this->assertStringContainsString('not reachable', $err);
        [$code, , $err] = self::php([self::EXAMPLES . '/remote_test.php', 'not-an-address']);
        $this->assertSame(2, $code);
        $this->assertStringContainsString('PEERID@HOST:PORT', $err);
    }
}
