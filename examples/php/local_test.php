<?php
/**
 * Run examples/hello/hello.wasm on this machine with the Phase CLI (`phase run --json`) and verify the
 * receipt it signs. Needs `phase` on the PATH (or PHASE_CLI naming it).
 *
 *     php examples/php/local_test.php
 */

declare(strict_types=1);

require __DIR__ . '/demo.inc.php';

exit(phase_demo(Phase\Client::local(), 'Phase Local WASM Execution Demo'));
