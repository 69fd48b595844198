
Ú
$20218ed9-069e-4113-98ad-51d3b1e7000b"

7926554863
upnK873401223105" ´€Ø*qMoved from no special educational provision to SEN support; social, emotional and mental health needs identified.ÒSEMH€„ŽØ