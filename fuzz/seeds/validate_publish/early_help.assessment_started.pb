
¹
$8f3a0854-df14-4350-8254-11a5e1f51711

9434765919"˜Ñ²Ö*dEarly help assessment started with the parent's consent after the school raised attendance concerns.ò
˜Ñ²Öschool-b