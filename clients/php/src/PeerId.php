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
        $bits = '';
        foreach (str_split($publicKey) as $byte) {
            $bits .= str_pad(decbin(ord($byte)), 8, '0', STR_PAD_LEFT);
        }
        $out = '';
        foreach (str_split($bits, 5) as $chunk) {
            $out .= self::ALPHABET[bindec(str_pad($chunk, 5, '0'))];
        }
        return $out;
    }

    /** The public key a peer id names; \InvalidArgumentException when it is not a peer id. */
    public static function toPublicKey(string $peerId): string
    {
        $text = strtolower(trim($peerId));
        if (strlen($text) !== 52 || strspn($text, self::ALPHABET) !== 52) {
            throw new \InvalidArgumentException("not a peer id: '$peerId'");
        }
        $bits = '';
        foreach (str_split($text) as $char) {
            $bits .= str_pad(decbin(strpos(self::ALPHABET, $char)), 5, '0', STR_PAD_LEFT);
        }
        $key = '';
        foreach (str_split(substr($bits, 0, 256), 8) as $byte) {
            $key .= chr(bindec($byte));
        }
        if (self::fromPublicKey($key) !== $text) {
            throw new \InvalidArgumentException("not a peer id: '$peerId'");
        }
        return $key;
    }
}
