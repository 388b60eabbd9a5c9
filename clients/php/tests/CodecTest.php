<?php

declare(strict_types=1);

namespace Phase\Tests;

use Phase\Bin;
use Phase\Canonical;
use Phase\Identity;
use Phase\Job;
use Phase\PeerAddress;
use Phase\PeerId;
use Phase\PhaseError;
use Phase\Receipt;
use Phase\VerificationError;
use Phase\Wire;
use PHPUnit\Framework\TestCase;

/** The pieces with no node: msgpack, canonical JSON, peer ids, receipts signed and checked here. */
final class CodecTest extends TestCase
{
    public function testPackedHeadersUnpackToTheSameValues(): void
    {
        $values = [null, true, false, 0, 127, 128, 255, 256, 65535, 65536, 4294967295, 4294967296, PHP_INT_MAX,
            -1, -32, -33, -128, -129, -32768, -32769, -2147483648, -2147483649, PHP_INT_MIN,
            '', 'a', str_repeat('x', 31), str_repeat('y', 32), str_repeat('z', 300), str_repeat('w', 70000),
            [], [1, 2, 3], range(0, 20), ['k' => 'v', 'n' => [1, ['deep' => true]]]];
        foreach ($values as $value) {
            $this->assertSame($value, msgpack_unpack(Wire::pack($value)), var_export($value, true));
        }
        $this->assertSame("\x80", Wire::pack(new \stdClass()));         // an empty map, not an empty array
        $this->assertSame("\xc4\x03abc", Wire::pack(new Bin('abc')));   // bin 8, which php-msgpack cannot write
        $this->assertSame('abc', msgpack_unpack(Wire::pack(new Bin('abc'))));
    }

    public function testDecodeRefusesWhatIsNotPhase1(): void
    {
        $ok = Wire::pack(['v' => 1, 't' => 'accept', 'job' => new Bin('t'), 'module' => true]);
        [$type, $fields] = Wire::decode([$ok]);
        $this->assertSame('accept', $type);
        $this->assertSame(['job' => 't', 'module' => true], $fields);
        foreach ([[], ["\xc1"], [Wire::pack(['v' => 2, 't' => 'accept'])], [Wire::pack(['v' => 1, 't' => 'offer'])],
                  [Wire::pack(['v' => 1, 't' => 'result'])], [Wire::pack([1, 2])], [str_repeat('a', 300000)]] as $frames) {
            try {
                Wire::decode($frames);
                $this->fail('decoded ' . bin2hex(implode('|', $frames)));
            } catch (PhaseError) {
                $this->addToAssertionCount(1);
            }
        }
    }

    public function testCanonicalJsonIsPythonsByteForByte(): void
    {
        // json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        $doc = ['b' => 1, 'a' => ['z' => null, 'y' => [true, false, -3]], 'é' => "é/\"\\\n\x01\u{2028}", 'A' => new \stdClass(),
            'signature' => 'dropped'];
        $this->assertSame('{"A":{},"a":{"y":[true,false,-3],"z":null},"b":1,"é":"é/\"\\\\\n\u0001' . "\u{2028}" . '"}',
            Canonical::bytes($doc));
        $this->expectException(\InvalidArgumentException::class);
        Canonical::bytes(['x' => 1.5]);
    }

    public function testPeerIdsRoundTrip(): void
    {
        $id = Identity::fromSeed(str_repeat("\x07", 32));
        $this->assertMatchesRegularExpression('/^[a-z2-7]{52}$/', $id->peerId());
        $this->assertSame($id->publicKey(), PeerId::toPublicKey($id->peerId()));
        $this->assertSame($id->publicKey(), PeerId::toPublicKey(strtoupper($id->peerId())));
        $address = PeerAddress::parse($id->peerId() . '@127.0.0.9:7000');
        $this->assertSame('tcp://127.0.0.9:7000', $address->endpoint());
        $this->assertSame(7465, PeerAddress::parse($id->peerId() . '@[::1]')->port);
        $this->assertSame($id->curveKeypair()[0], $address->curveKey());
        foreach (['nobody@127.0.0.1:1', $id->peerId() . '127.0.0.1', $id->peerId() . '@127.0.0.1:70000',
                  substr($id->peerId(), 0, -1) . 'b@h:1', $id->peerId() . '@bad host:1'] as $bad) {
            try {
                PeerAddress::parse($bad);
                $this->fail("parsed $bad");
            } catch (\InvalidArgumentException) {
                $this->addToAssertionCount(1);
            }
        }
    }

    public function testReceiptSignedHereVerifiesAndEveryTamperingIsNamed(): void
    {
        $node = Identity::generate();
        $job = new Job('module bytes', 'input bytes');
        $manifest = $job->manifest();
        $receipt = Receipt::sign(self::body($node, $manifest->jobId(), $manifest->nonce(), 'out', ''), $node);
        $receipt->verify(signer: $node->peerId(), nonce: $manifest->nonce(), manifest: $manifest, stdout: 'out',
            stderr: '', module: 'module bytes', input: 'input bytes');
        $cases = [
            'signature does not match' => ['exit_code' => 1],
            'is not ours' => ['nonce' => str_repeat('0', 32)],
            'node.peer_id does not match' => ['node' => ['peer_id' => Identity::generate()->peerId()] + $receipt->fields['node']],
            "'version' is a required property" => ['version' => null],
        ];
        foreach ($cases as $expected => $change) {
            $fields = array_filter(array_merge($receipt->fields, $change), static fn ($v) => $v !== null);
            try {
                (new Receipt($fields))->verify(signer: $node->peerId(), nonce: $manifest->nonce(), manifest: $manifest);
                $this->fail("accepted a receipt with $expected");
            } catch (VerificationError $e) {
                $this->assertStringContainsString($expected, $e->getMessage());
            }
        }
        try {
            $receipt->verify(signer: Identity::generate()->peerId(), stdout: 'other');
            $this->fail('accepted the wrong signer');
        } catch (VerificationError $e) {
            $this->assertCount(2, $e->problems);
        }
    }

    /** @return array<string, mixed> */
    public static function body(Identity $node, string $jobId, string $nonce, string $stdout, string $stderr): array
    {
        return ['version' => 1, 'job_id' => $jobId, 'nonce' => $nonce,
            'module' => 'sha256:' . hash('sha256', 'module bytes'), 'input' => 'sha256:' . hash('sha256', 'input bytes'),
            'stdout' => 'sha256:' . hash('sha256', $stdout), 'stderr' => 'sha256:' . hash('sha256', $stderr),
            'exit_code' => 0, 'status' => 'ok', 'message' => '', 'fuel_used' => 12, 'wall_us' => 345,
            'started_at' => '2026-11-30T04:00:00.000Z',
            'limits' => Job::DEFAULT_LIMITS,
            'node' => ['peer_id' => $node->peerId(), 'public_key' => base64_encode($node->publicKey()),
                'runtime' => 'php-test', 'runtime_version' => '1', 'arch' => 'x86_64']];
    }
}
