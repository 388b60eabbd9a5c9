<?php
/**
 * Offline autoloader for the phase/client package (PSR-4: Phase\ => src/), for use without Composer:
 *     require '/path/to/clients/php/autoload.php';
 * With Composer, its own vendor/autoload.php does the same from composer.json.
 */

declare(strict_types=1);

spl_autoload_register(static function (string $class): void {
    foreach (['Phase\\Tests\\' => __DIR__ . '/tests/', 'Phase\\' => __DIR__ . '/src/'] as $prefix => $dir) {
        if (str_starts_with($class, $prefix)) {
            $file = $dir . str_replace('\\', '/', substr($class, strlen($prefix))) . '.php';
            if (is_file($file)) {
                require $file;
            }
            return;
        }
    }
});
