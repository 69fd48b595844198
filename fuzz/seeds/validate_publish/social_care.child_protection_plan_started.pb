
ђ
$842fb5a5-0106-4f5a-8a28-71b642d5f316&

4010232137
localLAC-2026-004417"ая‡Ч*aInitial child protection conference agreed a child protection plan under the category of neglect.ЄRЂц„ЧNorthshire County Council"+Children's Services duty team, 01632 960412