
Ÿ
$e5e91742-706c-495b-b48a-34380cee9641

9434765919"ğÊ¢×*ZEarly help assessment completed with the family; a Team Around the Child will be convened.ú
ğÊ¢×school_attendanceemotional_wellbeingroutines_and_boundaries"housing_overcrowding"financial_hardship*tac_convened