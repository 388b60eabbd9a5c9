<?php

declare(strict_types=1);

namespace Phase;

/**
 * A job manifest: what a client asks a node to run (DESIGN.md, "Job manifest"; JSON Schema
 * pyphase/schemas/manifest.schema.json). Its job id is the sha256 of its canonical JSON, nonce included.
 */
final class Manifest
{
    public const VERSION = 1;

    /** @param array<string, mixed> $fields the manifest, with env and requires as objects */
    private function __construct(public readonly array $fields)
    {
    }

    public static function forJob(Job $job, ?string $nonce = null): self
    {
        $nonce ??= bin2hex(random_bytes(16));
        if (!preg_match('/^[0-9a-f]{32,128}$/D', $nonce)) {
            throw new ManifestError('nonce must be 32-128 lower-case hex digits');
        }
        if ($job->entry === '' || strlen($job->entry) > 256) {
            throw new ManifestError('entry must be 1-256 characters');
        }
        foreach ($job->env as $key => $value) {
            if ((string) $key === '' || str_contains((string) $key, '=') || str_contains((string) $key, "\0")) {
                throw new ManifestError("env name '$key' must be non-empty without '=' or NUL");
            }
        }
        return new self([
            'version' => self::VERSION,
            'module' => ['hash' => $job->moduleHash(), 'size' => strlen($job->module)],
            'entry' => $job->entry,
            'args' => array_values(array_map('strval', $job->args)),
            'env' => (object) array_map('strval', $job->env),
            'input' => ['hash' => 'sha256:' . hash('sha256', $job->input), 'size' => strlen($job->input)],
            'limits' => $job->limits,
            'requires' => (object) $job->requires,
            'deterministic' => $job->deterministic,
            'nonce' => $nonce,
        ]);
    }

    /** A manifest received as JSON (objects decoded as stdClass keep empty maps distinct from lists). */
    public static function fromJson(string $json): self
    {
        try {
            $doc = json_decode($json, false, 64, JSON_THROW_ON_ERROR);
        } catch (\JsonException $e) {
            throw new ManifestError('manifest is not JSON: ' . $e->getMessage());
        }
        if (!$doc instanceof \stdClass) {
            throw new ManifestError('manifest is not a JSON object');
        }
        $fields = [];
        foreach ((array) $doc as $key => $value) {
            $fields[$key] = ($value instanceof \stdClass && !in_array($key, ['env', 'requires'], true))
                ? json_decode(json_encode($value), true) : $value;
        }
        return new self($fields);
    }

    public function nonce(): string
    {
        return $this->fields['nonce'];
    }

    public function jobId(): string
    {
        return 'sha256:' . hash('sha256', Canonical::bytes($this->fields));
    }

    public function toJson(): string
    {
        return Canonical::encode($this->fields);
    }
}
