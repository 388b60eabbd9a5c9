<?php

declare(strict_types=1);

namespace Phase;

/**
 * The bytes a Phase signature covers: the document without its "signature" field, UTF-8 JSON with keys
 * sorted and no insignificant white space, integers only (pyphase.signing.canonical_bytes, byte for byte).
 *
 * PHP arrays that are lists encode as JSON arrays, other arrays and stdClass objects as JSON objects;
 * build an empty object as `new \stdClass()` (an empty PHP array is a list).
 */
final class Canonical
{
    private const FLAGS = JSON_UNESCAPED_UNICODE | JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_LINE_TERMINATORS
        | JSON_THROW_ON_ERROR;

    /** @param array<mixed>|\stdClass $document */
    public static function bytes(array|\stdClass $document): string
    {
        $body = (array) $document;
        unset($body['signature']);
        return self::object($body, '$');
    }

    /** Canonical JSON of any value (no field is removed). */
    public static function encode(mixed $value, string $path = '$'): string
    {
        if ($value === null || is_bool($value) || is_int($value)) {
            return json_encode($value, self::FLAGS);
        }
        if (is_string($value)) {
            if (!mb_check_encoding($value, 'UTF-8')) {
                throw new \InvalidArgumentException("$path: string is not UTF-8");
            }
            return json_encode($value, self::FLAGS);
        }
        if (is_float($value)) {
            throw new \InvalidArgumentException("$path: floats are not allowed in signed documents");
        }
        if ($value instanceof \stdClass) {
            return self::object((array) $value, $path);
        }
        if (is_array($value)) {
            if (array_is_list($value)) {
                $items = [];
                foreach ($value as $i => $item) {
                    $items[] = self::encode($item, "{$path}[$i]");
                }
                return '[' . implode(',', $items) . ']';
            }
            return self::object($value, $path);
        }
        throw new \InvalidArgumentException("$path: " . get_debug_type($value) . ' cannot appear in a signed document');
    }

    /** @param array<mixed> $map */
    private static function object(array $map, string $path): string
    {
        $keys = array_map('strval', array_keys($map));
        sort($keys, SORT_STRING);               // byte order of UTF-8 = code point order, as Python sorts
        $parts = [];
        foreach ($keys as $key) {
            $parts[] = self::encode($key, $path) . ':' . self::encode($map[$key], "$path.$key");
        }
        return '{' . implode(',', $parts) . '}';
    }
}
