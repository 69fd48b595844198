
÷
$a5cd7298-66ad-4027-87c5-8f495475e386&

8239384994
localLAC-2025-002981"¯’Ù’*^Review conference ended the child protection plan; family to continue with early help support.≤
Ä¢Ò’no_longer_at_risk