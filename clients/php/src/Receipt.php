<?php

declare(strict_types=1);

namespace Phase;

/**
 * A node's signed statement of what a job was and what it produced (DESIGN.md, "Receipt").
 *
 * verify() checks exactly what pyphase.verify_receipt checks and reports every failure, not only the
 * first: the schema, the Ed25519 signature over the canonical JSON, node.peer_id against node.public_key,
 * the signer being the expected peer, the nonce, the hash of every byte string given, and the job id,
 * module, input and nonce of the manifest the client sent.
 */
final class Receipt
{
    public const VERSION = 1;
    public const STATUSES = ['ok', 'trap', 'timeout', 'fuel_exhausted', 'memory_limit', 'output_limit',
        'invalid_module', 'rejected', 'crashed'];
    private const HASH = '/^sha256:[0-9a-f]{64}$/D';
    private const FIELDS = ['version', 'job_id', 'nonce', 'module', 'input', 'stdout', 'stderr', 'exit_code',
        'status', 'message', 'fuel_used', 'wall_us', 'started_at', 'limits', 'node', 'signature'];
    private const LIMITS = ['memory_bytes', 'fuel', 'timeout_ms', 'output_bytes'];
    private const NODE = ['peer_id', 'public_key', 'runtime', 'runtime_version', 'arch'];
    /** Present only where they apply: the output tree of a job with directories; the fuel unit of its engine. */
    private const OPTIONAL = ['outputs'];
    private const NODE_OPTIONAL = ['fuel_unit'];

    /** @param array<string, mixed> $fields */
    public function __construct(public readonly array $fields)
    {
    }

    public static function fromJson(string $json): self
    {
        try {
            $doc = json_decode($json, true, 16, JSON_THROW_ON_ERROR | JSON_BIGINT_AS_STRING);
        } catch (\JsonException $e) {
            throw new VerificationError(['receipt is not JSON: ' . $e->getMessage()]);
        }
        if (!is_array($doc) || ($doc !== [] && array_is_list($doc))) {
            throw new VerificationError(['receipt is not a JSON object']);
        }
        return new self($doc);
    }

    public function toJson(int $flags = 0): string
    {
        return json_encode($this->fields, $flags | JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE
            | JSON_THROW_ON_ERROR);
    }

    public function __get(string $name): mixed
    {
        return $this->fields[$name] ?? null;
    }

    /** The peer id of the node that signed it (as the receipt claims; verify() checks the claim). */
    public function signerPeerId(): string
    {
        return (string) ($this->fields['node']['peer_id'] ?? '');
    }

    /**
     * Sign a receipt body with $identity (for nodes written in PHP, and the interoperability tests).
     *
     * @param array<string, mixed> $body every receipt field but "signature"
     */
    public static function sign(array $body, Identity $identity): self
    {
        unset($body['signature']);
        $body['signature'] = base64_encode($identity->sign(Canonical::bytes($body)));
        return new self($body);
    }

    /**
     * Return $this if everything given checks out, else throw VerificationError listing every problem.
     *
     * @param string|null $signer expected node: a peer id or a raw 32-byte public key
     */
    public function verify(?string $signer = null, ?string $nonce = null, ?Manifest $manifest = null,
                           ?string $stdout = null, ?string $stderr = null, ?string $module = null,
                           ?string $input = null): self
    {
        $r = $this->fields;
        $problems = self::schemaProblems($r);
        $publicKey = self::publicKey($r);
        if ($publicKey === null) {
            $problems[] = 'node.public_key is missing or not 32 bytes of base64';
            throw new VerificationError($problems);
        }
        $problems = array_merge($problems, self::signatureProblems($r, $publicKey));
        if (($r['node']['peer_id'] ?? null) !== PeerId::fromPublicKey($publicKey)) {
            $problems[] = 'node.peer_id does not match node.public_key';
        }
        if ($signer !== null) {
            try {
                $expected = strlen($signer) === 32 ? $signer : PeerId::toPublicKey($signer);
                if (!hash_equals($expected, $publicKey)) {
                    $problems[] = 'signed by ' . PeerId::fromPublicKey($publicKey) . ', expected '
                        . PeerId::fromPublicKey($expected);
                }
            } catch (\InvalidArgumentException $e) {
                $problems[] = 'expected signer: ' . $e->getMessage();
            }
        }
        if ($nonce !== null && ($r['nonce'] ?? null) !== $nonce) {
            $problems[] = 'nonce ' . json_encode($r['nonce'] ?? null) . " is not ours ('$nonce')";
        }
        foreach (['module' => $module, 'input' => $input, 'stdout' => $stdout, 'stderr' => $stderr] as $field => $data) {
            if ($data !== null) {
                $digest = 'sha256:' . hash('sha256', $data);
                if (($r[$field] ?? null) !== $digest) {
                    $problems[] = "$field hash " . json_encode($r[$field] ?? null)
                        . " does not match the bytes given ($digest)";
                }
            }
        }
        if ($manifest !== null) {
            $m = $manifest->fields;
            if (($r['job_id'] ?? null) !== $manifest->jobId()) {
                $problems[] = 'job_id does not match the manifest';
            }
            if (($r['module'] ?? null) !== ($m['module']['hash'] ?? null)) {
                $problems[] = "module hash differs from the manifest's";
            }
            if (($r['input'] ?? null) !== ($m['input']['hash'] ?? null)) {
                $problems[] = "input hash differs from the manifest's";
            }
            if (($r['nonce'] ?? null) !== ($m['nonce'] ?? null)) {
                $problems[] = "nonce differs from the manifest's";
            }
        }
        if ($problems) {
            throw new VerificationError($problems);
        }
        return $this;
    }

    /** @param array<string, mixed> $r */
    private static function publicKey(array $r): ?string
    {
        $text = $r['node']['public_key'] ?? null;
        if (!is_string($text)) {
            return null;
        }
        $key = base64_decode($text, true);
        return ($key !== false && strlen($key) === SODIUM_CRYPTO_SIGN_PUBLICKEYBYTES) ? $key : null;
    }

    /**
     * @param array<string, mixed> $r
     * @return list<string>
     */
    private static function signatureProblems(array $r, string $publicKey): array
    {
        $encoded = $r['signature'] ?? null;
        if (!is_string($encoded)) {
            return ['signature: document has no signature'];
        }
        $signature = base64_decode($encoded, true);
        if ($signature === false) {
            return ['signature: signature is not valid base64'];
        }
        if (strlen($signature) !== SODIUM_CRYPTO_SIGN_BYTES) {
            return ['signature: signature has ' . strlen($signature) . ' bytes, expected 64'];
        }
        if (base64_encode($signature) !== $encoded) {
            // unused low bits of the last character set: the same bytes spelled another way (pyphase and C refuse it)
            return ['signature: signature is not canonical base64'];
        }
        try {
            $message = Canonical::bytes($r);
        } catch (\InvalidArgumentException | \JsonException $e) {
            return ['signature: document cannot be canonicalised: ' . $e->getMessage()];
        }
        return sodium_crypto_sign_verify_detached($signature, $message, $publicKey)
            ? [] : ['signature: signature does not match the document and key'];
    }

    /**
     * The receipt JSON Schema (pyphase/schemas/receipt.schema.json), checked by hand: no third-party code.
     *
     * @param array<string, mixed> $r
     * @return list<string>
     */
    public static function schemaProblems(array $r): array
    {
        $p = [];
        foreach (array_diff(self::FIELDS, array_map('strval', array_keys($r))) as $missing) {
            $p[] = "$: '$missing' is a required property";
        }
        foreach (array_diff(array_map('strval', array_keys($r)), self::FIELDS, self::OPTIONAL) as $extra) {
            $p[] = "$: additional property '$extra' is not allowed";
        }
        $str = static fn (string $k, string $re) => !array_key_exists($k, $r)
            || (is_string($r[$k]) && preg_match($re, $r[$k])) ? null : "$.$k: does not match $re";
        $int = static fn (string $k, int $min, int $max = PHP_INT_MAX) => !array_key_exists($k, $r)
            || (is_int($r[$k]) && $r[$k] >= $min && $r[$k] <= $max) ? null : "$.$k: not an integer in [$min, $max]";
        $checks = [
            array_key_exists('version', $r) && $r['version'] !== self::VERSION ? '$.version: must be 1' : null,
            $str('job_id', self::HASH), $str('module', self::HASH), $str('input', self::HASH),
            $str('stdout', self::HASH), $str('stderr', self::HASH),
            $str('nonce', '/^[0-9a-f]{32,128}$/D'),
            $str('started_at', '/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z$/D'),
            $str('signature', '/^[A-Za-z0-9+\/]{86}==$/D'),
            $int('exit_code', -2147483648, 2147483647), $int('fuel_used', 0), $int('wall_us', 0),
            array_key_exists('status', $r) && !in_array($r['status'], self::STATUSES, true)
                ? '$.status: not a known status' : null,
            array_key_exists('message', $r) && (!is_string($r['message']) || mb_strlen($r['message'], 'UTF-8') > 1024)
                ? '$.message: not a string of at most 1024 characters' : null,
        ];
        $p = array_merge($p, array_values(array_filter($checks)));
        if (array_key_exists('limits', $r)) {
            $l = $r['limits'];
            if (!is_array($l) || !self::sameKeys($l, self::LIMITS)) {
                $p[] = '$.limits: must hold exactly ' . implode(', ', self::LIMITS);
            } else {
                foreach ($l as $k => $v) {
                    if (!is_int($v) || $v < 0) {
                        $p[] = "$.limits.$k: not a non-negative integer";
                    }
                }
            }
        }
        if (array_key_exists('outputs', $r)) {
            $o = $r['outputs'];
            if (!is_array($o) || !self::sameKeys($o, ['hash', 'size'])
                || !is_string($o['hash']) || !preg_match(self::HASH, $o['hash'])
                || !is_int($o['size']) || $o['size'] < 0) {
                $p[] = '$.outputs: must hold exactly hash (sha256:) and size (a non-negative integer)';
            }
        }
        if (array_key_exists('node', $r)) {
            $n = $r['node'];
            if (!is_array($n) || !self::sameKeys($n, self::NODE, self::NODE_OPTIONAL)) {
                $p[] = '$.node: must hold exactly ' . implode(', ', self::NODE) . ' (and may hold '
                    . implode(', ', self::NODE_OPTIONAL) . ')';
            } else {
                if (array_key_exists('fuel_unit', $n)
                    && (!is_string($n['fuel_unit']) || mb_strlen($n['fuel_unit'], 'UTF-8') > 64)) {
                    $p[] = '$.node.fuel_unit: not a string of at most 64 characters';
                }
                if (!is_string($n['peer_id']) || !preg_match('/^[a-z2-7]{52}$/D', $n['peer_id'])) {
                    $p[] = '$.node.peer_id: not a peer id';
                }
                if (!is_string($n['public_key']) || !preg_match('/^[A-Za-z0-9+\/]{43}=$/D', $n['public_key'])) {
                    $p[] = '$.node.public_key: not 32 bytes of base64';
                }
                foreach (['runtime', 'runtime_version', 'arch'] as $k) {
                    if (!is_string($n[$k]) || mb_strlen($n[$k], 'UTF-8') > 64) {
                        $p[] = "$.node.$k: not a string of at most 64 characters";
                    }
                }
            }
        }
        return $p;
    }

    /**
     * @param array<mixed> $map
     * @param list<string> $keys
     * @param list<string> $optional
     */
    private static function sameKeys(array $map, array $keys, array $optional = []): bool
    {
        $have = array_map('strval', array_keys($map));
        return !array_diff($keys, $have) && !array_diff($have, $keys, $optional);
    }
}
