<?php

declare(strict_types=1);

namespace Phase;

/** An Ed25519 key pair, its peer id and the X25519 (CURVE) keys derived from it (pyphase.identity). */
final class Identity
{
    private function __construct(private readonly string $keypair)
    {
    }

    public static function generate(): self
    {
        return new self(sodium_crypto_sign_keypair());
    }

    public static function fromSeed(string $seed): self
    {
        if (strlen($seed) !== SODIUM_CRYPTO_SIGN_SEEDBYTES) {
            throw new PhaseError('identity seed must be 32 bytes, got ' . strlen($seed));
        }
        return new self(sodium_crypto_sign_seed_keypair($seed));
    }

    public function publicKey(): string
    {
        return sodium_crypto_sign_publickey($this->keypair);
    }

    public function peerId(): string
    {
        return PeerId::fromPublicKey($this->publicKey());
    }

    /** Detached Ed25519 signature of $message. */
    public function sign(string $message): string
    {
        return sodium_crypto_sign_detached($message, sodium_crypto_sign_secretkey($this->keypair));
    }

    /** @return array{0: string, 1: string} (public, secret) raw 32-byte X25519 keys for ZeroMQ CURVE */
    public function curveKeypair(): array
    {
        return [
            sodium_crypto_sign_ed25519_pk_to_curve25519($this->publicKey()),
            sodium_crypto_sign_ed25519_sk_to_curve25519(sodium_crypto_sign_secretkey($this->keypair)),
        ];
    }
}
