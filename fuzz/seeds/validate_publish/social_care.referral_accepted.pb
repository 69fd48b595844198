
Ц
$9d2eebce-9881-404f-ad70-888d32592255&

4010232137
localLAC-2026-004417"РуЌЦ*gReferral from the school's designated safeguarding lead accepted by the MASH for a strategy discussion.ў
РуЌЦ3AMASH