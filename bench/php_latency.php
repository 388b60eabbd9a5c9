<?php
/**
 * bench/clients_bench.py's PHP side: N tiny jobs (examples/hello, cached on the node) submitted one after
 * another by one Phase\Client over phase/1, each timed end to end including receipt verification.
 *     php bench/php_latency.php PEERID@HOST:PORT N      (prints one latency in microseconds per line)
 */

declare(strict_types=1);

require __DIR__ . '/../clients/php/autoload.php';

[, $address, $count] = $argv;
$client = new Phase\Client([$address]);
$job = Phase\Job::fromFile(__DIR__ . '/../examples/hello/hello.wasm')->withInput('Hello, World');
$out = [];
for ($i = 0; $i < (int) $count; $i++) {
    $t0 = hrtime(true);
    $result = $client->submit($job);
    $out[] = intdiv(hrtime(true) - $t0, 1000);
    if ($result->stdout !== 'dlroW ,olleH' || !$result->verified) {
        fwrite(STDERR, "wrong result\n");
        exit(1);
    }
}
echo implode("\n", $out), "\n";
