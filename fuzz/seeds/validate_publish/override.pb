

$842fb5a5-0106-4f5a-8a28-71b642d5f316&

4010232137
localLAC-2026-004417"àÿ‡×*aInitial child protection conference agreed a child protection plan under the category of neglect.ªR€ö„×Northshire County Council"+Children's Services duty team, 01632 960412I
G5Section 47 enquiry opened after disclosure at school.Team managernhs-trust-a