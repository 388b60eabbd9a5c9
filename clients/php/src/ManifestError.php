<?php

declare(strict_types=1);

namespace Phase;

/** A job manifest that does not match its schema (Python: ManifestError). */
class ManifestError extends PhaseError
{
}
