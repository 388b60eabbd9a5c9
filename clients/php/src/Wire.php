<?php

declare(strict_types=1);

namespace Phase;

/**
 * The phase/1 wire codec, client side (pyphase/net/wire.py is the reference; docs/NETWORK.md).
 *
 * A message is ZeroMQ multipart: a msgpack header map with "v" (1) and "t" (type), then raw payload
 * frames. Headers are decoded with php-msgpack. They are encoded here because php-msgpack writes every
 * PHP string as msgpack "str" and phase/1 needs "bin" for job tags; the packer below covers exactly the
 * types a client sends (nil, bool, int, str, bin, array, map).
 */
final class Wire
{
    public const PROTOCOL = 'phase/1';
    public const VERSION = 1;
    public const MAX_HEADER_BYTES = 256 << 10;
    public const MAX_TAG_BYTES = 32;
    /** node -> client message types and their payload frame counts */
    private const INBOUND = ['caps' => 0, 'accept' => 0, 'reject' => 0, 'chunk' => 1, 'result' => 2, 'error' => 0];
    /** the most output bytes one chunk carries */
    public const MAX_CHUNK_BYTES = 64 << 10;
    private const OUTBOUND = ['caps?' => 0, 'offer' => 1, 'module' => 1];

    /**
     * Frames of a client -> node message.
     *
     * @param array<string, mixed> $fields
     * @param list<string> $payloads
     * @return list<string>
     */
    public static function encode(string $type, array $fields = [], array $payloads = []): array
    {
        if (!array_key_exists($type, self::OUTBOUND) || count($payloads) !== self::OUTBOUND[$type]) {
            throw new \InvalidArgumentException("a client does not send $type with " . count($payloads) . ' payloads');
        }
        return [self::pack(['v' => self::VERSION, 't' => $type] + $fields), ...$payloads];
    }

    /**
     * Parse a node's message: [type, header fields, payload frames]. Throws PhaseError on anything that is
     * not phase/1 (the caller treats it as that peer's failure).
     *
     * @param list<string> $frames
     * @return array{0: string, 1: array<string, mixed>, 2: list<string>}
     */
    public static function decode(array $frames): array
    {
        if (!$frames) {
            throw new PhaseError('empty message');
        }
        if (strlen($frames[0]) > self::MAX_HEADER_BYTES) {
            throw new PhaseError('header of ' . strlen($frames[0]) . ' bytes exceeds ' . self::MAX_HEADER_BYTES);
        }
        $header = @msgpack_unpack($frames[0]);
        if (!is_array($header)) {
            throw new PhaseError('header is not a msgpack map');
        }
        if (($header['v'] ?? null) !== self::VERSION) {
            throw new PhaseError('not ' . self::PROTOCOL . ': v=' . json_encode($header['v'] ?? null));
        }
        $type = $header['t'] ?? null;
        if (!is_string($type) || !array_key_exists($type, self::INBOUND)) {
            throw new PhaseError('unexpected message type ' . json_encode($type));
        }
        if (count($frames) - 1 !== self::INBOUND[$type]) {
            throw new PhaseError("$type takes " . self::INBOUND[$type] . ' payload frames, got ' . (count($frames) - 1));
        }
        unset($header['v'], $header['t']);
        return [$type, $header, array_slice($frames, 1)];
    }

    /** msgpack of $value: PHP strings as str, Bin as bin, list arrays as arrays, other arrays and stdClass as maps. */
    public static function pack(mixed $value): string
    {
        if ($value === null) {
            return "\xc0";
        }
        if (is_bool($value)) {
            return $value ? "\xc3" : "\xc2";
        }
        if (is_int($value)) {
            return self::packInt($value);
        }
        if (is_string($value)) {
            $n = strlen($value);
            $head = match (true) {
                $n < 32 => chr(0xa0 | $n),
                $n < 0x100 => "\xd9" . chr($n),
                $n < 0x10000 => "\xda" . pack('n', $n),
                default => "\xdb" . pack('N', $n),
            };
            return $head . $value;
        }
        if ($value instanceof Bin) {
            $n = strlen($value->bytes);
            $head = match (true) {
                $n < 0x100 => "\xc4" . chr($n),
                $n < 0x10000 => "\xc5" . pack('n', $n),
                default => "\xc6" . pack('N', $n),
            };
            return $head . $value->bytes;
        }
        if ($value instanceof \stdClass || (is_array($value) && !array_is_list($value))) {
            $map = (array) $value;
            $out = self::container(count($map), 0x80, "\xde", "\xdf");
            foreach ($map as $k => $v) {
                $out .= self::pack((string) $k) . self::pack($v);
            }
            return $out;
        }
        if (is_array($value)) {
            $out = self::container(count($value), 0x90, "\xdc", "\xdd");
            foreach ($value as $v) {
                $out .= self::pack($v);
            }
            return $out;
        }
        throw new \InvalidArgumentException(get_debug_type($value) . ' has no place in a phase/1 header');
    }

    private static function container(int $n, int $fix, string $m16, string $m32): string
    {
        return match (true) {
            $n < 16 => chr($fix | $n),
            $n < 0x10000 => $m16 . pack('n', $n),
            default => $m32 . pack('N', $n),
        };
    }

    private static function packInt(int $v): string
    {
        return match (true) {
            $v >= 0 && $v < 0x80 => chr($v),
            $v >= 0 && $v < 0x100 => "\xcc" . chr($v),
            $v >= 0 && $v < 0x10000 => "\xcd" . pack('n', $v),
            $v >= 0 && $v <= 0xffffffff => "\xce" . pack('N', $v),
            $v >= 0 => "\xcf" . pack('J', $v),
            $v >= -32 => chr($v & 0xff),
            $v >= -0x80 => "\xd0" . chr($v & 0xff),
            $v >= -0x8000 => "\xd1" . pack('n', $v & 0xffff),
            $v >= -0x80000000 => "\xd2" . pack('N', $v & 0xffffffff),
            default => "\xd3" . pack('J', $v),
        };
    }
}
