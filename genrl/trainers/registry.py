"""`trainer:` names and the algorithm each one runs. Every algorithm file holds its advantages,
the denoising steps it trains and its loss; adding a trainer is one file and one line here."""

from genrl.trainers.ddpo import DDPO
from genrl.trainers.dppo import DPPO
from genrl.trainers.pxpo import PXPO
from genrl.trainers.rebel import REBEL
from genrl.trainers.sft_pg import SFTPG

TRAINERS = {"ddpo": DDPO, "pxpo": PXPO, "rebel": REBEL, "sft_pg": SFTPG, "dppo": DPPO}
