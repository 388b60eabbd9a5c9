<?php

declare(strict_types=1);

namespace Phase\Tests;

/**
 * One real plasmd process on a loopback address (127.0.0.x, a free port), started with PHASE_PYTHON
 * (default python3) and waited for by reading the address line it prints once listening.
 */
final class NodeProcess
{
    private const START_TIMEOUT_S = 30.0;
    /** @var resource|null */
    private $proc = null;
    /** @var resource|null */
    private $stdout = null;
    public string $address = '';
    public string $peerId = '';
    public readonly string $log;

    /**
     * @param string|null $misbehave a way to cheat (tests/net/misbehaving_plasmd.py: forge-receipt,
     *        mismatch-stdout, wrong-signer, lie-stdout, hang), so tests can show the client catches it
     */
    public function __construct(public readonly string $dataDir, private readonly ?string $misbehave = null,
                                private readonly array $extra = [])
    {
        $this->log = $dataDir . '.log';
    }

    public static function python(): string
    {
        return getenv('PHASE_PYTHON') ?: 'python3';
    }

    public static function tempDir(): string
    {
        $dir = sys_get_temp_dir() . '/phase-php-' . bin2hex(random_bytes(6));
        mkdir($dir, 0700, true);
        return $dir;
    }

    public function start(): self
    {
        $host = '127.0.0.' . random_int(2, 250);
        $launcher = $this->misbehave === null ? ['-m', 'pyphase.daemon']
            : [__DIR__ . '/../../../tests/net/misbehaving_plasmd.py', $this->misbehave];
        $cmd = [self::python(), ...$launcher, '--listen', "$host:0", '--data-dir', $this->dataDir,
            '--workers', '1', '--no-mdns', '--no-dht', ...$this->extra];
        $this->proc = proc_open($cmd, [0 => ['file', '/dev/null', 'r'], 1 => ['pipe', 'w'], 2 => ['file', $this->log, 'a']],
            $pipes);
        if (!is_resource($this->proc)) {
            throw new \RuntimeException('cannot start plasmd');
        }
        $this->stdout = $pipes[1];
        $read = [$this->stdout];
        $none = null;
        $line = '';
        $deadline = microtime(true) + self::START_TIMEOUT_S;
        while (!str_contains($line, "\n") && microtime(true) < $deadline) {
            $read = [$this->stdout];
            if (stream_select($read, $none, $none, 0, 200_000) > 0) {
                $chunk = fread($this->stdout, 4096);
                if ($chunk === '' || $chunk === false) {
                    throw new \RuntimeException('plasmd exited: ' . $this->logTail());
                }
                $line .= $chunk;
            }
        }
        if (!str_contains($line, "\n")) {
            throw new \RuntimeException('plasmd printed no address: ' . $this->logTail());
        }
        $this->address = trim(strtok($line, "\n"));
        $this->peerId = explode('@', $this->address)[0];
        return $this;
    }

    public function kill(): void
    {
        if ($this->proc !== null) {
            proc_terminate($this->proc, 9);
            proc_close($this->proc);
            $this->proc = null;
        }
    }

    public function stop(): void
    {
        if ($this->proc !== null) {
            proc_terminate($this->proc, 15);
            $deadline = microtime(true) + 15;
            while (proc_get_status($this->proc)['running'] && microtime(true) < $deadline) {
                usleep(20_000);
            }
            $this->kill();
        }
    }

    /** @return list<array<string, mixed>> the node's logged events named $name */
    public function events(string $name): array
    {
        $out = [];
        foreach (file($this->log, FILE_IGNORE_NEW_LINES) ?: [] as $line) {
            $record = json_decode($line, true);
            if (is_array($record) && ($record['event'] ?? null) === $name) {
                $out[] = $record;
            }
        }
        return $out;
    }

    public function logTail(): string
    {
        return substr((string) @file_get_contents($this->log), -2000);
    }
}
