<?php
/** The demo both examples print; $client decides where the job runs. */

declare(strict_types=1);

require __DIR__ . '/../../clients/php/autoload.php';

function phase_demo(Phase\Client $client, string $title): int
{
    $module = __DIR__ . '/../hello/hello.wasm';
    $input = 'Hello, World';
    echo $title, "\n", str_repeat('=', strlen($title) + 1), "\n";
    echo '1. Creating job for ', basename($module), "...\n";
    $job = Phase\Job::fromFile($module)->withInput($input);
    echo "2. Submitting job with input: '$input'\n";
    try {
        $result = $client->submit($job);
    } catch (Phase\PhaseError $e) {
        fwrite(STDERR, get_class($e) . ': ' . $e->getMessage() . "\n");
        return 1;
    } finally {
        $client->close();
    }
    echo "3. Execution complete!\n";
    echo "Results:\n--------\n";
    echo 'Output: ', $result->stdout, "\n";
    echo 'Exit code: ', $result->exitCode, "\n";
    echo 'Wall time: ', $result->wallTimeMs(), "ms\n";
    echo 'Receipt verified: ', $result->verified ? '✓' : '✗', "\n";
    return $result->verified && $result->ok() ? 0 : 1;
}
