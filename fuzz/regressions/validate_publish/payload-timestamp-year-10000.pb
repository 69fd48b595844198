
¶
$9a54f42f-fd04-413a-8298-302856ee4fa5

9434765919"¨¨âÖ*QNot brought to the paediatric outpatient appointment for the third time in a row.š"
paediatric_outpatient€ƒÑÿ¯