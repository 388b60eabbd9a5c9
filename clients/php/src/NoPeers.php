<?php

declare(strict_types=1);

namespace Phase;

/** No peer was given, or none can take the job (Python: NoPeers). */
class NoPeers extends NetworkError
{
}
