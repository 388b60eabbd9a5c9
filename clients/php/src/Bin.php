<?php

declare(strict_types=1);

namespace Phase;

/** A byte string to be sent as msgpack "bin" (PHP strings are sent as "str", which must be UTF-8). */
final class Bin
{
    public function __construct(public readonly string $bytes)
    {
    }
}
