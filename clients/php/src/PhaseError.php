<?php

declare(strict_types=1);

namespace Phase;

/** Base class of every error the Phase client raises (Python: pyphase.errors.PhaseError). */
class PhaseError extends \RuntimeException
{
}
