<?php

declare(strict_types=1);

namespace Phase\Transport;

use Phase\InvalidModule;
use Phase\Job;
use Phase\PhaseError;
use Phase\Receipt;
use Phase\Result;
use Phase\VerificationError;

/**
 * Runs jobs on this machine with the Phase CLI (`phase run --json`, in an isolated worker process) and
 * verifies the receipt it signs: signature, module, input, stdout and stderr hashes, and the signer when
 * $signer (a peer id, e.g. the output of `phase id`) is given. The job's output must be UTF-8 text,
 * since `phase run --json` carries it as a JSON string.
 */
final class LocalTransport implements Transport
{
    /** @var list<string> */
    private array $command;

    /**
     * @param string|list<string> $command how to invoke the CLI (default: `phase` on the PATH, or the
     *        PHASE_CLI environment variable, a JSON array or a path)
     * @param string|null $identity key file that signs the receipts (`phase run --identity`)
     */
    public function __construct(string|array|null $command = null, private readonly ?string $identity = null,
                                private readonly ?string $signer = null)
    {
        $command ??= getenv('PHASE_CLI') ?: 'phase';
        if (is_string($command) && str_starts_with(ltrim($command), '[')) {
            $command = json_decode($command, true, 4, JSON_THROW_ON_ERROR);
        }
        $this->command = is_array($command) ? array_values($command) : [$command];
    }

    public function run(Job $job, ?callable $onOutput = null): Result
    {
        $tmp = [];
        try {
            $module = $job->path;
            if ($module === null) {
                $module = $tmp[] = self::tempFile($job->module, '.wasm');
            }
            $input = $tmp[] = self::tempFile($job->input, '.in');
            $errors = $tmp[] = self::tempFile('', '.err');
            $l = $job->limits;
            $cmd = [...$this->command, 'run', $module, '--json', '--input-file', $input, '--entry', $job->entry,
                '--memory', $l['memory_bytes'] . 'B', '--timeout', $l['timeout_ms'] . 'ms',
                '--output-limit', $l['output_bytes'] . 'B'];
            if ($l['fuel'] > 0) {
                array_push($cmd, '--fuel', (string) $l['fuel']);
            }
            foreach ($job->args as $arg) {
                array_push($cmd, '--arg', $arg);
            }
            foreach ($job->env as $key => $value) {
                array_push($cmd, '--env', "$key=$value");
            }
            if ($job->deterministic) {
                $cmd[] = '--deterministic';
            }
            if ($this->identity !== null) {
                array_push($cmd, '--identity', $this->identity);
            }
            $proc = proc_open($cmd, [0 => ['file', '/dev/null', 'r'], 1 => ['pipe', 'w'], 2 => ['file', $errors, 'w']],
                $pipes);
            if (!is_resource($proc)) {
                throw new PhaseError('cannot start ' . $this->command[0]);
            }
            $out = stream_get_contents($pipes[1]);
            fclose($pipes[1]);
            $code = proc_close($proc);
            $doc = json_decode((string) $out, true, 32);
            if (!is_array($doc)) {
                $why = trim((string) file_get_contents($errors));
                throw new PhaseError("phase run failed (exit $code): " . ($why !== '' ? $why : 'no JSON on stdout'));
            }
        } finally {
            foreach ($tmp as $file) {
                @unlink($file);
            }
        }
        if (($doc['status'] ?? '') === 'invalid_module' && !isset($doc['receipt'])) {
            throw new InvalidModule((string) ($doc['message'] ?? 'invalid module'));
        }
        if (!is_array($doc['receipt'] ?? null)) {
            throw new VerificationError(['phase run --json printed no receipt']);
        }
        if (!is_string($doc['stdout'] ?? null) || !is_string($doc['stderr'] ?? null)) {
            throw new PhaseError('the job wrote output that is not UTF-8, which phase run --json cannot carry');
        }
        $receipt = (new Receipt($doc['receipt']))->verify(signer: $this->signer, stdout: $doc['stdout'],
            stderr: $doc['stderr'], module: $job->module, input: $job->input);
        if ($onOutput !== null) {              // phase run --json gives the output at the end, verified
            foreach ([1 => $doc['stdout'], 2 => $doc['stderr']] as $stream => $data) {
                if ($data !== '') {
                    $onOutput($stream, $data);
                }
            }
        }
        return Result::fromReceipt($receipt, $doc['stdout'], $doc['stderr'], $receipt->signerPeerId(), [], true);
    }

    private static function tempFile(string $data, string $suffix): string
    {
        $path = tempnam(sys_get_temp_dir(), 'phase') ?: throw new PhaseError('cannot create a temporary file');
        file_put_contents($path, $data);
        return $path;
    }

    public function close(): void
    {
    }
}
