
Ð
$4f16af41-7c2e-4ce8-a0a1-0abc1b67aa54"

7926554863
upnK873401223105"˜“Ì×*gThree-day suspension for persistent disruptive behaviour; reintegration meeting booked with the parent.ÊPD"€àÎ×