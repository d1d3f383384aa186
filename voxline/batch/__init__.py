"""The arq process (`voxline arq`): batch synthesis jobs and the housekeeping cron. Nothing
here is on the real-time path: arq polls its queue, which is fine for work nobody waits on
live and wrong for a sentence a caller is waiting to hear (docs/batch.md)."""
