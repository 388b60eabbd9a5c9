<?php

declare(strict_types=1);

namespace Phase;

/** A peer address PEERID@HOST:PORT: the peer id names (and authenticates) the node; the port defaults to 7465. */
final class PeerAddress
{
    public const DEFAULT_PORT = 7465;

    private function __construct(
        public readonly string $peerId,
        public readonly string $publicKey,
        public readonly string $host,
        public readonly int $port,
    ) {
    }

    public static function parse(string $text): self
    {
        $text = trim($text);
        $at = strpos($text, '@');
        if ($at === false) {
            throw new \InvalidArgumentException("a peer address is PEERID@HOST:PORT, got '$text'");
        }
        $peerId = strtolower(substr($text, 0, $at));
        $key = PeerId::toPublicKey($peerId);
        $hostport = substr($text, $at + 1);
        if (preg_match('/^\[([0-9a-fA-F:.]+)\](?::(\d{1,5}))?$/D', $hostport, $m)) {
            [$host, $port] = [$m[1], $m[2] ?? ''];
        } elseif (preg_match('/^([A-Za-z0-9.-]+)(?::(\d{1,5}))?$/D', $hostport, $m)) {
            [$host, $port] = [$m[1], $m[2] ?? ''];
        } else {
            throw new \InvalidArgumentException("a peer address needs a host and a port: '$text'");
        }
        $port = $port === '' ? self::DEFAULT_PORT : (int) $port;
        if ($port < 1 || $port > 65535) {
            throw new \InvalidArgumentException("port out of range in '$text'");
        }
        return new self($peerId, $key, $host, $port);
    }

    /** The ZeroMQ endpoint (IPv6 literals in brackets). */
    public function endpoint(): string
    {
        return 'tcp://' . (str_contains($this->host, ':') ? "[{$this->host}]" : $this->host) . ':' . $this->port;
    }

    /** The node's CURVE server key: its Ed25519 public key converted to X25519 (raw 32 bytes). */
    public function curveKey(): string
    {
        return sodium_crypto_sign_ed25519_pk_to_curve25519($this->publicKey);
    }

    public function __toString(): string
    {
        return "{$this->peerId}@" . (str_contains($this->host, ':') ? "[{$this->host}]" : $this->host) . ":{$this->port}";
    }
}
