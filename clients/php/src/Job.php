<?php

declare(strict_types=1);

namespace Phase;

/**
 * What to run: a WebAssembly (WASI) module, its input (stdin), arguments, environment and limits.
 * Immutable; the with*() methods return a changed copy.
 *
 *     $job = Job::fromFile('hello.wasm')->withInput('Hello, World')->withLimits(timeoutMs: 2000);
 */
final class Job
{
    /** Python's pyphase.Limits() defaults. */
    public const DEFAULT_LIMITS = ['memory_bytes' => 64 << 20, 'fuel' => 0, 'timeout_ms' => 10_000,
        'output_bytes' => 1 << 20];

    /**
     * @param list<string> $args
     * @param array<string, string> $env
     * @param array{memory_bytes: int, fuel: int, timeout_ms: int, output_bytes: int} $limits
     * @param array<string, string|int> $requires
     */
    public function __construct(
        public readonly string $module,
        public readonly string $input = '',
        public readonly array $args = [],
        public readonly array $env = [],
        public readonly string $entry = '_start',
        public readonly array $limits = self::DEFAULT_LIMITS,
        public readonly bool $deterministic = false,
        public readonly array $requires = [],
        public readonly ?string $path = null,
    ) {
    }

    public static function fromFile(string $path): self
    {
        $bytes = @file_get_contents($path);
        if ($bytes === false) {
            throw new PhaseError("cannot read $path");
        }
        return new self($bytes, path: $path);
    }

    public function withInput(string $input): self
    {
        return $this->with(['input' => $input]);
    }

    /** @param list<string> $args */
    public function withArgs(array $args): self
    {
        return $this->with(['args' => array_values($args)]);
    }

    /** @param array<string, string> $env */
    public function withEnv(array $env): self
    {
        return $this->with(['env' => $env]);
    }

    public function withLimits(?int $memoryBytes = null, ?int $fuel = null, ?int $timeoutMs = null,
                               ?int $outputBytes = null): self
    {
        $limits = $this->limits;
        foreach (['memory_bytes' => $memoryBytes, 'fuel' => $fuel, 'timeout_ms' => $timeoutMs,
                  'output_bytes' => $outputBytes] as $key => $value) {
            if ($value !== null) {
                if ($value < 0) {
                    throw new ManifestError("limits.$key must not be negative");
                }
                $limits[$key] = $value;
            }
        }
        return $this->with(['limits' => $limits]);
    }

    public function withDeterministic(bool $deterministic = true): self
    {
        return $this->with(['deterministic' => $deterministic]);
    }

    public function moduleHash(): string
    {
        return 'sha256:' . hash('sha256', $this->module);
    }

    /** The manifest of one submission of this job (a fresh nonce unless one is given). */
    public function manifest(?string $nonce = null): Manifest
    {
        return Manifest::forJob($this, $nonce);
    }

    /** @param array<string, mixed> $changes */
    private function with(array $changes): self
    {
        $fields = get_object_vars($this);
        return new self(...array_merge($fields, $changes));
    }
}
