<?php
/**
 * Run examples/hello/hello.wasm on the Phase node named on the command line, over phase/1 (ZeroMQ CURVE),
 * and verify its signed receipt.
 *
 *     php examples/php/remote_test.php PEERID@HOST:PORT
 */

declare(strict_types=1);

require __DIR__ . '/demo.inc.php';

if ($argc !== 2) {
    fwrite(STDERR, "usage: php remote_test.php PEERID@HOST:PORT\n");
    exit(2);
}
try {
    $client = new Phase\Client([$argv[1]]);
} catch (InvalidArgumentException | Phase\PhaseError $e) {
    fwrite(STDERR, 'remote_test.php: ' . $e->getMessage() . "\n");
    exit(2);
}
exit(phase_demo($client, 'Phase Remote WASM Execution Demo'));
