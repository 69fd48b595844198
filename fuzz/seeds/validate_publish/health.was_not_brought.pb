
µ
$9a54f42f-fd04-413a-8298-302856ee4fa5

9434765919"®®‚÷*QNot brought to the paediatric outpatient appointment for the third time in a row.ö!
paediatric_outpatient®®‚÷