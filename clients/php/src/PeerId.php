<?php

declare(strict_types=1);

namespace Phase;

/** Peer ids: lower-case base32 (RFC 4648, no padding) of a whole Ed25519 public key (pyphase.identity). */
final class PeerId
{
    private const ALPHABET = 'abcdefghijklmnopqrstuvwxyz234567';

    public static function fromPublicKey(string $publicKey): string
    {
        if (strlen($publicKey) !== SODIUM_CRYPTO_SIGN_PUBLICKEYBYTES) {
            throw new \InvalidArgumentException('public key must be 32 bytes, got ' . strlen($publicKey));
        }
        $out = '';
        $buffer = $bits = 0;
        for ($i = 0; $i < 32; $i++) {
            $buffer = (($buffer << 8) | ord($publicKey[$i])) & 0xfff;
            $bits += 8;
            while ($bits >= 5) {
                $bits -= 5;
                $out .= self::ALPHABET[($buffer >> $bits) & 31];
            }
        }
        $out .= self::ALPHABET[($buffer << (5 - $bits)) & 31];    // 256 = 51 * 5 + 1: one bit left
        return $out;
    }

    /** The public key a peer id names; \InvalidArgumentException when it is not a peer id. */
    public static function toPublicKey(string $peerId): string
    {
        $text = strtolower(trim($peerId));
        if (strlen($text) !== 52 || strspn($text, self::ALPHABET) !== 52) {
            throw new \InvalidArgumentException("not a peer id: '$peerId'");
        }
        $key = '';
        $buffer = $bits = 0;
        for ($i = 0; $i < 52; $i++) {
            $buffer = (($buffer << 5) | strpos(self::ALPHABET, $text[$i])) & 0xfff;
            $bits += 5;
            if ($bits >= 8) {
                $bits -= 8;
                $key .= chr(($buffer >> $bits) & 0xff);
            }
        }
        // 52 * 5 = 260 bits: the last 4 must be zero, or two texts would name one key
        if (self::fromPublicKey($key) !== $text) {
            throw new \InvalidArgumentException("not a peer id: '$peerId'");
        }
        return $key;
    }
}
